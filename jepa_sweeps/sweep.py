"""The sweep: Tune + OptunaSearch (seeded TPE, define-by-run) + ASHA/FIFO over trial drivers.

Also where a sweep's locations are decided (storage, tracking URI, MLflow experiment) and where
an interrupted sweep is resumed: a ``jepa_sweeps.json`` beside Tune's experiment state records
the spec digest and the parent MLflow run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch

from jepa_sweeps.space import SearchSpace
from jepa_sweeps.redaction import connectable, redact
from jepa_sweeps.spec import SweepSpec
from jepa_sweeps.trial import run_trial, train_storage

STATE_FILE = "jepa_sweeps.json"


def home() -> Path:
    return Path(os.environ.get("JEPA_SWEEPS_HOME", "~/.jepa_sweeps")).expanduser().resolve()


def is_uri(path: str) -> bool:
    return "://" in path


@dataclass(frozen=True)
class Locations:
    """Absolute places a sweep reads and writes (the same on every Ray node)."""

    storage: str  # Ray storage: absolute path or URI
    tracking_uri: str
    experiment: str

    @property
    def artifact_root(self) -> str | None:
        """Artifacts of a local SQLite store go to a folder beside it; a server decides its own."""
        if urlparse(self.tracking_uri).scheme == "sqlite":
            database = Path(self.tracking_uri.removeprefix("sqlite:///"))
            return (database.parent / "mlartifacts" / self.experiment).as_uri()
        return None


def locate(spec: SweepSpec) -> Locations:
    storage = spec.storage or str(home() / "ray_results")
    if not is_uri(storage):
        storage = str(Path(storage).expanduser().resolve())
    uri = spec.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home() / 'mlflow.db'}"
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and uri.startswith("sqlite:///") and len(uri) > len("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        uri = f"sqlite:///{Path(path).expanduser().resolve()}"
    elif not parsed.scheme and uri != "databricks":  # MLflow's name for the Databricks workspace
        uri = f"sqlite:///{Path(uri).expanduser().resolve()}"
    return Locations(storage, uri, spec.mlflow.experiment or spec.name)


def experiment_path(spec: SweepSpec, loc: Locations) -> str:
    return f"{loc.storage.rstrip('/')}/{spec.name}"


def queue_file(spec: SweepSpec, loc: Locations) -> Path:
    """The append-only journal of MLflow writes queued during an outage (``retry.BufferedClient``):
    beside the sweep state, or under the home when storage is a bucket (no appending there)."""
    if is_uri(loc.storage):
        return home() / "queues" / f"{spec.name}.jsonl"
    return Path(experiment_path(spec, loc)) / "mlflow_queue.jsonl"


def read_state(spec: SweepSpec, loc: Locations) -> dict[str, Any] | None:
    """The recorded state of an earlier sweep with this name, if any (read-only)."""
    path = f"{experiment_path(spec, loc)}/{STATE_FILE}"
    if is_uri(path):
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        if fs.get_file_info(inner).type == pafs.FileType.NotFound:
            return None
        with fs.open_input_stream(inner) as f:
            return json.loads(f.read())
    file = Path(path)
    return json.loads(file.read_text()) if file.is_file() else None


def write_state(spec: SweepSpec, loc: Locations, state: dict[str, Any]) -> None:
    path = f"{experiment_path(spec, loc)}/{STATE_FILE}"
    text = json.dumps(state, indent=2)
    if is_uri(path):
        import pyarrow.fs as pafs

        fs, inner = pafs.FileSystem.from_uri(path)
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(inner) as f:
            f.write(text.encode())
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def delete_sweep(spec: SweepSpec, loc: Locations) -> None:
    """``--fresh``: forget the Tune experiment and its Train checkpoints (MLflow keeps the runs)."""
    for path in (experiment_path(spec, loc), train_storage(spec, loc.storage)):
        if is_uri(path):
            import pyarrow.fs as pafs

            fs, inner = pafs.FileSystem.from_uri(path)
            if fs.get_file_info(inner).type != pafs.FileType.NotFound:
                fs.delete_dir(inner)
        else:
            shutil.rmtree(path, ignore_errors=True)


class Search(OptunaSearch):
    """``OptunaSearch`` that tells Optuna a diverged trial (sweep metric NaN) as the worst value.

    Stock ``OptunaSearch`` passes the NaN to ``study.tell``, which Optuna refuses: Ray logs a
    warning and the trial stays RUNNING, unseen by TPE. As the worst value it joins TPE's bad group.
    """

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        value = (result or {}).get(self.metric)
        if isinstance(value, float) and math.isnan(value):
            result = {**result, self.metric: -math.inf if self.mode == "max" else math.inf}
        super().on_trial_complete(trial_id, result, error)


def searcher(spec: SweepSpec) -> Any:
    space = SearchSpace(spec)
    search = Search(
        space=space,
        metric=spec.metric,
        mode=spec.mode,
        points_to_evaluate=[space.optuna_params(p) for p in spec.points] or None,
        sampler=optuna.samplers.TPESampler(seed=spec.optuna.seed, n_startup_trials=spec.n_startup_trials),
    )
    return Repeater(search, repeat=spec.seeds, set_index=True) if spec.seeds > 1 else search


def scheduler(spec: SweepSpec) -> Any:
    if spec.scheduler.name == "fifo":
        return FIFOScheduler()
    epochs = spec.trial_config({}).epochs
    return ASHAScheduler(
        time_attr="epoch",
        max_t=epochs,
        grace_period=min(spec.scheduler.grace_period, epochs),
        reduction_factor=spec.scheduler.reduction_factor,
        stop_last_trials=False,
    )


def trainable(spec: SweepSpec, loc: Locations) -> Any:
    res = spec.resources
    fn = tune.with_parameters(run_trial, spec=spec, storage=loc.storage)
    return tune.with_resources(fn, {"cpu": res.driver_cpus, **res.driver_resources})


def build_tuner(spec: SweepSpec, loc: Locations, callbacks: list[Any]) -> tune.Tuner:
    """A new Tuner, or the restored one when this sweep was interrupted."""
    path = experiment_path(spec, loc)
    if tune.Tuner.can_restore(path):
        return tune.Tuner.restore(path, trainable(spec, loc), resume_errored=True)
    return tune.Tuner(
        trainable(spec, loc),
        tune_config=tune.TuneConfig(
            search_alg=searcher(spec),
            scheduler=scheduler(spec),
            metric=spec.metric,
            mode=spec.mode,
            num_samples=spec.num_samples * spec.seeds,
            max_concurrent_trials=spec.resources.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=loc.storage,
            callbacks=callbacks,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )


@dataclass
class Session:
    tuner: tune.Tuner
    client: Any
    experiment_id: str
    parent_run_id: str

    def fit(self) -> Any:
        return self.tuner.fit()


def start_sweep(spec: SweepSpec, loc: Locations, state: dict[str, Any] | None, fresh: bool) -> Session:
    """Set up MLflow (experiment, parent run) and the Tuner; resume when ``state`` is given."""
    import ray
    import torch
    from mlflow.tracking import MlflowClient

    from jepa_sweeps.tracking import SweepLogger, ensure_experiment, git_commit, start_parent_run

    if fresh:
        delete_sweep(spec, loc)
        queue_file(spec, loc).unlink(missing_ok=True)
    client = MlflowClient(connectable(loc.tracking_uri))
    experiment_id = ensure_experiment(client, loc.experiment, loc.artifact_root)
    parent = state.get("parent_run_id") if state else None
    if parent is None or not _run_exists(client, parent):
        parent = start_parent_run(
            client,
            experiment_id,
            spec,
            tags={
                "jepa.role": "sweep",
                "jepa.spec_digest": spec.digest(),
                "mlflow.source.git.commit": git_commit(),
                "ray_version": ray.__version__,
                "torch_version": torch.__version__,
            },
        )
    else:
        client.update_run(parent, status="RUNNING")
    write_state(spec, loc, {"digest": spec.digest(), "parent_run_id": parent, "experiment_id": experiment_id})
    logger = SweepLogger(spec, loc.tracking_uri, experiment_id, parent, queue_file(spec, loc))
    return Session(build_tuner(spec, loc, [logger]), client, experiment_id, parent)


def _run_exists(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def finish_sweep(spec: SweepSpec, loc: Locations, session: Session, results: Any) -> str:
    """Summary table, best encoder as an artifact, parent run closed; returns what to print."""
    from jepa_sweeps.tracking import TRIAL_TAG, run_name, runs_link, trial_status
    from jepa_sweeps.trial import config_for

    client = session.client
    runs = {
        r.data.tags.get(TRIAL_TAG): r
        for r in client.search_runs(
            [session.experiment_id], f"tags.`mlflow.parentRunId` = '{session.parent_run_id}'", max_results=10000
        )
    }
    rows = []
    for result in results:
        config = result.config or {}
        cfg = config_for(spec, config, check_paths=False)
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id")
        status = trial_status(cfg, metrics, result.error is not None)
        rows.append((metrics.get(spec.metric), run_name(cfg), status, metrics, trial_id))
    sign = -1 if spec.mode == "max" else 1
    finite = [r for r in rows if isinstance(r[0], (int, float)) and math.isfinite(r[0])]  # not diverged
    scored = sorted(finite, key=lambda r: sign * r[0])
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(Counter(r[2] for r in rows).items()))
    lines = [f"\n{len(rows)} trials ({statuses}); best by {spec.metric} ({spec.mode}):"]
    header = f"  {'run':<34} {'status':<14} {'epoch':>5} {spec.metric:>10} {'linear_acc':>10} {'rankme':>8}"
    lines.append(header)
    for value, name, status, metrics, _ in scored[:10]:
        lines.append(
            f"  {name:<34} {status:<14} {int(metrics.get('epoch', 0)):>5} {value:>10.4f} "
            f"{metrics.get('linear_acc', float('nan')):>10.4f} {metrics.get('rankme', float('nan')):>8.2f}"
        )
    if scored:
        best = scored[0]
        best_run = runs.get(best[4])
        checkpoint = best[3].get("checkpoint_path")
        if best_run is not None and checkpoint:
            _log_encoder(client, best_run.info.run_id, checkpoint, loc.storage)
            client.set_tag(session.parent_run_id, "jepa.best_run_id", best_run.info.run_id)
        client.log_metric(session.parent_run_id, f"best_{spec.metric}", float(best[0]))
    from jepa_sweeps.report import publish_report, safe_name

    report_line = publish_report(client, session.parent_run_id, home() / "reports" / safe_name(loc.experiment))
    client.set_terminated(session.parent_run_id, "FINISHED")
    link = redact(runs_link(loc.tracking_uri, session.experiment_id))
    lines += ["", f"MLflow UI:   {ui_hint(loc.tracking_uri)}", f"runs table:  {link}", report_line]
    return "\n".join(lines)


def ui_hint(tracking_uri: str) -> str:
    """How to open the MLflow UI. ``mlflow ui`` has no authentication: it binds 127.0.0.1 only."""
    if urlparse(tracking_uri).scheme == "sqlite":
        return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"
    return f"open {redact(tracking_uri)} in a browser (the tracking server is the UI)"


def _log_encoder(client: Any, run_id: str, checkpoint: str, storage: str) -> None:
    """Copy the best trial's last encoder weights into its MLflow run (``best_encoder/``).

    Train reports ``checkpoint`` as a path inside the storage filesystem, without a URI scheme.
    """
    import tempfile

    import pyarrow.fs as pafs

    from jepa_sweeps.train import ENCODER_FILE

    fs = pafs.FileSystem.from_uri(storage)[0] if is_uri(storage) else pafs.LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp, ENCODER_FILE)
        with fs.open_input_stream(f"{checkpoint}/{ENCODER_FILE}") as f:
            target.write_bytes(f.read())
        client.log_artifact(run_id, str(target), artifact_path="best_encoder")
