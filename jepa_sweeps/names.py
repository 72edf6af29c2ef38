"""Names the sweep writes to MLflow and the report reads back: tags, params, artifacts, statuses.

Written once here so that writer and reader cannot drift apart.
"""

from __future__ import annotations

# -- tags ----------------------------------------------------------------------------------------
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a trial's run under its sweep's run
GIT_COMMIT_TAG = "mlflow.source.git.commit"
ROLE_TAG = "jepa.role"  # on the parent run of a sweep
SWEEP_ROLE = "sweep"
SPEC_DIGEST_TAG = "jepa.spec_digest"
BEST_RUN_TAG = "jepa.best_run_id"
TRIAL_TAG = "jepa.trial_id"  # the Tune trial id of a child run
STATUS_TAG = "jepa.status"
REASON_TAG = "jepa.reason"  # why a trial diverged
REPEATS_TAG = "jepa.repeated_suggestions"  # later suggestions of this configuration answered by this run
ERROR_TAG = "jepa.error"  # the last line of a failed trial's error

# -- values of STATUS_TAG ------------------------------------------------------------------------
RUNNING = "running"
FINISHED = "finished"
STOPPED_EARLY = "stopped early"
DIVERGED = "diverged"
FAILED = "failed"
COMPARABLE = (FINISHED, STOPPED_EARLY)  # trials that count in comparisons

# -- params of a child run (besides the flattened config) ----------------------------------------
REGULARISER_PARAM = "regulariser"
LAMBDA_PARAM = "lambda"
LAMBDA_ADDITIVE_PARAM = "lambda_additive"  # λ' = λ/(1-λ) of the additive form inv + λ'·reg
NO_LAMBDA = "n/a"  # LAMBDA_PARAM of an objective without λ

# -- params of a sweep's parent run --------------------------------------------------------------
METRIC_PARAM = "metric"
MODE_PARAM = "mode"
SEARCHED_PARAM = "searched"
NOTHING_SEARCHED = "none"

# -- artifacts -----------------------------------------------------------------------------------
CONFIG_ARTIFACT = "trial_config.json"  # a child run's exact TrialConfig
SPEC_ARTIFACT = "spec.yaml"  # a parent run's spec, redacted
DIAGNOSTICS = "diagnostics"  # a child run's per-eval pictures
BEST_ENCODER = "best_encoder"  # the best trial's encoder weights, on its run
REPORT_ARTIFACT = "report"  # the sweep report, on the parent run
