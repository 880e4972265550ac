"""The report of a run: ``audit.report.render.render(run_dir, layout=None)``.

Reads only the run folder's artifacts and the original images (no TensorFlow) and
writes ``index.html`` (one self-contained file, or with ``assets/`` in the folder
layout), ``summary.md`` and ``junit.xml``. See ``render.py`` for the sections and
how to add one, ``assets.py`` for embedding pictures. Templates live in
``templates/`` and ``templates/sections/`` (package data, shipped in the wheel).
"""
