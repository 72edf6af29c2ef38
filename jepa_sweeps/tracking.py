"""MLflow: one parent run per sweep, one child run per trial, written from the Tune driver only.

Ray's own ``MLflowLoggerCallback`` has no parent run, sends one request per metric and
duplicates runs after ``Tuner.restore``. This callback sends one ``log_batch`` per report, tags
every child with ``mlflow.parentRunId`` and its Tune trial id, and rebuilds its trial → run map
from MLflow itself on start-up, so a resumed sweep continues the same runs.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune.logger import LoggerCallback

from jepa_sweeps import names
from jepa_sweeps.config import TrialConfig
from jepa_sweeps.names import PARENT_TAG, REPEATS_TAG, STATUS_TAG, TRIAL_TAG
from jepa_sweeps.retry import BufferedClient
from jepa_sweeps.redaction import connectable, redact
from jepa_sweeps.spec import SweepSpec
from jepa_sweeps.storage import filesystem, is_uri
from jepa_sweeps.train import ARTIFACTS_DIR

log = logging.getLogger(__name__)

# Tune's bookkeeping, not training metrics.
TUNE_KEYS = {
    "time_this_iter_s", "time_total_s", "training_iteration", "timestamp", "pid", "done",
    "iterations_since_restore", "time_since_restore", "date", "hostname", "node_ip", "trial_id",
    "experiment_tag", "config", "should_checkpoint", "checkpoint_dir_name", "epoch", "step",
}


def readable_params(cfg: TrialConfig) -> dict[str, Any]:
    """The columns researchers compare first, then the whole flattened config."""
    params = {
        names.REGULARISER_PARAM: cfg.objective.name,
        names.LAMBDA_PARAM: getattr(cfg.objective, "lam", names.NO_LAMBDA),
        names.LAMBDA_ADDITIVE_PARAM: getattr(cfg.objective, "lam_additive", names.NO_LAMBDA),  # inv + λ'·reg; inf at λ=1
        "n_global_views": cfg.views.n_global,
        "n_local_views": cfg.views.n_local,
        "batch_size": cfg.optim.batch_size,
        "lr_scaled": cfg.optim.scaled_lr(),
        "seed": cfg.seed,
        "world_size": cfg.workers,
        "encoder": cfg.encoder.name,
        "dataset": cfg.data.name,
        "epochs": cfg.epochs,
    }
    params.update({f"objective.{k}": v for k, v in cfg.objective_params.items()})
    params.update(flatten(cfg.model_dump(mode="json")))
    return params


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def run_name(cfg: TrialConfig) -> str:
    """E.g. ``<objective>-lam0.05-g2l6-b128-s0``."""
    lam = getattr(cfg.objective, "lam", None)
    parts = [cfg.objective.name]
    if lam is not None:
        parts.append(f"lam{lam:.3g}")
    parts += [f"g{cfg.views.n_global}l{cfg.views.n_local}", f"b{cfg.optim.batch_size}", f"s{cfg.seed}"]
    return "-".join(parts)


def trial_status(cfg: TrialConfig, last: dict[str, Any] | None, failed: bool) -> str:
    if failed:
        return names.FAILED
    if last and last.get("diverged"):
        return names.DIVERGED
    if last and int(last.get("epoch", 0)) < cfg.epochs:
        return names.STOPPED_EARLY
    return names.FINISHED


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_root)


def runs_link(tracking_uri: str, experiment_id: str) -> str:
    """The URL that opens the runs table (not the GenAI view MLflow 3 opens by default)."""
    base = tracking_uri.rstrip("/") if urlparse(tracking_uri).scheme in ("http", "https") else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


class SweepLogger(LoggerCallback):
    """Tune callback writing child runs under ``parent_run_id``.

    It is pickled into the Tune experiment state in storage: ``tracking_uri`` must hold no
    credentials (the runner's ``without_credentials``); ``connectable`` finds them at setup.
    """

    def __init__(self, spec: SweepSpec, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 journal: Path | None = None):
        self.spec, self.tracking_uri, self.journal = spec, tracking_uri, journal
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.runs: dict[str, str] = {}
        self.configs: dict[str, TrialConfig] = {}
        self.last_step: dict[str, int] = {}  # run id → last epoch logged

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self.client = BufferedClient(MlflowClient(connectable(self.tracking_uri)), journal=self.journal)
        self.client.flush()  # an earlier driver's queued writes first: the runs they create count below
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.{PARENT_TAG} = '{self.parent_run_id}'", max_results=10000
        )
        self.runs = {r.data.tags[TRIAL_TAG]: r.info.run_id for r in found if TRIAL_TAG in r.data.tags}
        # A resumed trial repeats the epochs after its last checkpoint: those already logged are not logged twice.
        self.last_step = {
            r.info.run_id: max((m.step for m in self.client.get_metric_history(r.info.run_id, self.spec.metric)), default=0)
            for r in found if TRIAL_TAG in r.data.tags and self.spec.metric in r.data.metrics
        }

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "client"}

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.client.drain()  # writes queued during a tracking outage

    def config_of(self, trial: Any) -> TrialConfig:
        if trial.trial_id not in self.configs:
            from jepa_sweeps.trial import config_for

            self.configs[trial.trial_id] = config_for(self.spec, trial.config, check_paths=False)
        return self.configs[trial.trial_id]

    def log_trial_start(self, trial: Any) -> None:
        if trial.trial_id in self.runs:
            self.client.set_tag(self.runs[trial.trial_id], STATUS_TAG, names.RUNNING)
            return
        cfg = self.config_of(trial)
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name(cfg),
            tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id, STATUS_TAG: names.RUNNING},
        )
        self.runs[trial.trial_id] = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in readable_params(cfg).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i : i + 100])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, names.CONFIG_ARTIFACT)
            path.write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
            self.client.log_artifact(run.info.run_id, str(path))

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        step = int(result.get("epoch", iteration))
        if step <= self.last_step.get(run_id, 0):
            return
        self.last_step[run_id] = step
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, step)
            for k, v in result.items()
            if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        self.client.log_batch(run_id, metrics=metrics)
        if result.get("checkpoint_path"):
            upload_checkpoint_files(self.client, run_id, str(result["checkpoint_path"]))

    def note_repeat(self, trial_id: str, count: int) -> None:
        """``Search`` answered ``count`` later suggestions of this trial's configuration with its result."""
        run_id = self.runs.get(trial_id)
        if run_id is not None:
            self.client.set_tag(run_id, REPEATS_TAG, str(count))

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        status = trial_status(self.config_of(trial), trial.last_result, failed)
        tags = [RunTag(STATUS_TAG, status)]
        if failed and getattr(trial, "error_file", None):
            tags.append(RunTag(names.ERROR_TAG, _last_error_line(trial)))
        if status == names.DIVERGED:
            tags.append(RunTag(names.REASON_TAG, str(trial.last_result.get("diverged_reason", "non-finite loss"))))
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


def upload_checkpoint_files(client: MlflowClient, run_id: str, checkpoint: str) -> None:
    """Copy the files a worker left in the checkpoint's ``artifacts/`` (plots written since the
    previous checkpoint) into the run's ``diagnostics/``. A checkpoint already pruned by Ray only costs a warning:
    its metrics are logged, and losing pictures must not stop the sweep."""
    if not is_uri(checkpoint) and not Path(checkpoint).is_absolute():
        return  # a path inside remote storage without its scheme (Train reports S3 ones so): not reachable here
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fs, inner = filesystem(checkpoint)
            folder = f"{inner.rstrip('/')}/{ARTIFACTS_DIR}"
            selector = pafs.FileSelector(folder, recursive=True, allow_not_found=True)
            files = [i for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]
            for info in files:
                target = Path(tmp, info.path[len(folder) :].lstrip("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                with fs.open_input_stream(info.path) as f:
                    target.write_bytes(f.read())
            if files:
                client.log_artifacts(run_id, tmp, names.DIAGNOSTICS)
    except (OSError, ValueError, MlflowException) as err:
        log.warning("could not upload the files of checkpoint %s: %s", checkpoint, err)


def _last_error_line(trial: Any) -> str:
    try:
        lines = [ln for ln in Path(trial.error_file).read_text().splitlines() if ln.strip()]
        return redact(lines[-1])[:5000] if lines else "unknown error"
    except OSError:
        return "unknown error"


def start_parent_run(client: MlflowClient, experiment_id: str, spec: SweepSpec, tags: dict[str, str]) -> str:
    run = client.create_run(experiment_id, run_name=f"sweep-{spec.name}", tags=tags)
    client.log_batch(
        run.info.run_id,
        params=[
            Param(k, str(v)[:6000])
            for k, v in {
                "num_samples": spec.num_samples, "seeds": spec.seeds, names.METRIC_PARAM: spec.metric,
                names.MODE_PARAM: spec.mode, "scheduler": spec.scheduler.name, "workers": spec.resources.workers,
                names.SEARCHED_PARAM: ",".join(spec.searched) or names.NOTHING_SEARCHED,
            }.items()
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, names.SPEC_ARTIFACT)
        path.write_text(redact(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)))
        client.log_artifact(run.info.run_id, str(path))
    return run.info.run_id

