"""The HTML report of a run: ``audit.report.render.render(run_dir)``.

Reads only the run folder's artifacts and the original images (no TensorFlow),
writes ``index.html`` and ``assets/``. Templates live in ``templates/`` (package
data: ship ``audit/report/templates/*.j2`` in the wheel).
"""
