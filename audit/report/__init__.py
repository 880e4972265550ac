"""The report of a run: ``audit.report.render.render(run_dir, layout=None)``.

Reads only the run folder's artifacts and the original images (no TensorFlow) and
writes ``index.html`` (one self-contained file, or with ``assets/`` in the folder
layout), ``summary.md`` and ``junit.xml``. See ``render.py`` for the sections and
how to add one, ``assets.py`` for embedding pictures. The templates live in the
project's top-level ``templates/`` (shipped in the wheel as ``audit/templates``);
``report.templates`` names a folder of overrides searched first (``jinja.py``).
"""
