"""``python -m jepa_sweeps.report EXPERIMENT_OR_SPEC [--csv DIR] [--out DIR] [--tracking-uri URI]``

Answers a sweep's questions from its MLflow runs in one command: a comparison table in the
terminal, PNG plots (metric vs λ with 95% intervals over seeds, view and batch-size effects,
training curves of the top trials, parameter importances) next to raw-pixel and random-init
baselines, one self-contained HTML report, and with ``--csv`` every metric curve as ``step,value``
files for plotting elsewhere. ``finish_sweep`` runs the same code to put the report on the
sweep's parent run.

Trials are compared at one epoch: the last epoch every finished or early-stopped trial reached,
so ASHA-stopped trials are not compared against longer-trained ones.

Modules: ``runs`` (a sweep's runs in MLflow), ``stats``, ``tables``, ``plots``, ``page`` (HTML),
``export`` (CSV), ``build`` (the report from all of them), ``cli``.
"""
