"""A sweep's runs in MLflow: finding the store and the sweep, reading trials' params, metric
histories and stored artifacts."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from jepa_sweeps import names
from jepa_sweeps.config import TrialConfig


class ReportError(Exception):
    """Nothing to report on; ``str`` is one line for the terminal."""


@dataclass
class Trial:
    run: Run
    client: MlflowClient
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run.info.run_name or self.run.info.run_id[:8]

    @property
    def status(self) -> str:
        return self.run.data.tags.get(names.STATUS_TAG, self.run.info.status.lower())

    @property
    def params(self) -> dict[str, str]:
        return self.run.data.params

    def history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of a metric, by step; a step logged twice (resumed trial) keeps its order."""
        if key not in self.histories:
            metrics = self.client.get_metric_history(self.run.info.run_id, key) if key in self.run.data.metrics else []
            self.histories[key] = [(m.step, m.value) for m in sorted(metrics, key=lambda m: (m.step, m.timestamp))]
        return self.histories[key]

    def last_epoch(self, key: str) -> int | None:
        points = self.history(key)
        return points[-1][0] if points else None

    def at(self, key: str, epoch: int) -> float | None:
        """The value at ``epoch`` (metrics carry over between evals, so the last one up to it)."""
        last = self.last_epoch(key)
        if last is None or last < epoch:
            return None
        return [v for s, v in self.history(key) if s <= epoch][-1]

    def lam(self) -> float | None:
        try:
            return float(self.params.get(names.LAMBDA_PARAM, names.NO_LAMBDA))
        except ValueError:
            return None


@dataclass
class Sweep:
    experiment: str
    parent: Run
    trials: list[Trial]

    @property
    def name(self) -> str:
        return self.parent.info.run_name or self.parent.info.run_id

    @property
    def metric(self) -> str:
        return self.parent.data.params.get(names.METRIC_PARAM, "knn_acc")

    @property
    def mode(self) -> str:
        return self.parent.data.params.get(names.MODE_PARAM, "max")

    @property
    def searched(self) -> list[str]:
        text = self.parent.data.params.get(names.SEARCHED_PARAM, names.NOTHING_SEARCHED)
        return [] if text == names.NOTHING_SEARCHED else text.split(",")

    @property
    def comparable(self) -> list[Trial]:
        return [t for t in self.trials if t.status in names.COMPARABLE and t.last_epoch(self.metric) is not None]

    def config_key(self, trial: Trial) -> tuple[tuple[str, str], ...]:
        """What distinguishes a configuration: the searched values (seeds are repeats of one)."""
        keys = self.searched or [names.REGULARISER_PARAM, names.LAMBDA_PARAM]
        return tuple((k, trial.params.get(k, "")) for k in keys)

    def sign(self) -> int:
        return -1 if self.mode == "max" else 1


def resolve(target: str, tracking_uri: str | None) -> tuple[str, str]:
    """(tracking URI, experiment name) from a spec path or an experiment name, as the runner does."""
    from jepa_sweeps.spec import MLflowSpec, SweepSpec, load_spec
    from jepa_sweeps.storage import locate

    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        overrides = [f"mlflow.tracking_uri={tracking_uri}"] if tracking_uri else []
        loc = locate(load_spec(target, overrides))
        return loc.tracking_uri, loc.experiment
    return locate(SweepSpec(name="report", mlflow=MLflowSpec(tracking_uri=tracking_uri))).tracking_uri, target


def open_store(uri: str) -> MlflowClient:
    """A client, refusing a SQLite file that does not exist (MLflow would create an empty one)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ReportError(f"no MLflow store at {uri}")
    return MlflowClient(uri)


def load_sweep(client: MlflowClient, experiment: str, parent_run_id: str | None = None) -> Sweep:
    """The given sweep, or the latest sweep (parent run tagged ``jepa.role=sweep``) of an experiment."""
    if parent_run_id is not None:
        parent = client.get_run(parent_run_id)
        experiment_id = parent.info.experiment_id
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None or found.lifecycle_stage == "deleted":
            raise ReportError(f"no MLflow experiment named {experiment!r} in {client.tracking_uri}")
        experiment_id = found.experiment_id
        parents = client.search_runs(
            [experiment_id], f"tags.`{names.ROLE_TAG}` = '{names.SWEEP_ROLE}'", order_by=["attributes.start_time DESC"], max_results=1
        )
        if not parents:
            raise ReportError(f"experiment {experiment!r} has no sweep runs")
        parent = parents[0]
    children = client.search_runs(
        [experiment_id], f"tags.`{names.PARENT_TAG}` = '{parent.info.run_id}'", max_results=50000
    )
    sweep = Sweep(experiment, parent, [Trial(r, client) for r in sorted(children, key=lambda r: r.info.start_time)])
    if not sweep.comparable:
        raise ReportError(
            f"experiment {experiment!r} has no finished runs in its latest sweep ({sweep.name}, {len(children)} trials)"
        )
    return sweep


def common_epoch(sweep: Sweep) -> int:
    return min(t.last_epoch(sweep.metric) for t in sweep.comparable)


def quiet_downloads() -> None:
    """MLflow draws a progress bar per downloaded file: noise in a report's output."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def stored_config(client: MlflowClient, trial: Trial) -> TrialConfig | None:
    """The exact config the runner stored with the trial (``names.CONFIG_ARTIFACT``), if present."""
    from mlflow.exceptions import MlflowException

    quiet_downloads()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(trial.run.info.run_id, names.CONFIG_ARTIFACT, tmp)
            return TrialConfig.model_validate(json.loads(Path(path).read_text()))
    except (MlflowException, OSError, ValueError):
        return None


def best_trial_pictures(client: MlflowClient, trial: Trial, out: Path) -> list[Path]:
    """The best trial's diagnostic pictures of its last plotted epoch (spectrum; PCA, attention)."""
    from mlflow.exceptions import MlflowException

    quiet_downloads()
    try:
        epochs = [a.path for a in client.list_artifacts(trial.run.info.run_id, names.DIAGNOSTICS) if a.is_dir]
        if not epochs:
            return []
        folder = Path(client.download_artifacts(trial.run.info.run_id, sorted(epochs)[-1], str(out / "best_trial")))
    except (MlflowException, OSError):
        return []
    return sorted(folder.glob("*.png"))
