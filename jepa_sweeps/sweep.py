"""The sweep: Tune + OptunaSearch (seeded TPE, define-by-run) + ASHA/FIFO over trial drivers.

Also where an interrupted sweep is resumed: the sweep's state file (``jepa_sweeps.storage``)
records the spec digest, the parent MLflow run and the tracking store.
"""

from __future__ import annotations

import json
import math
import pickle
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import Repeater, Searcher
from ray.tune.search.optuna import OptunaSearch

from jepa_sweeps import names
from jepa_sweeps.accounting import (
    BUDGET_TAG, Accounting, BudgetLimiter, BudgetScheduler, cost_lines, ledger_for, sweep_totals,
)
from jepa_sweeps.progress import Progress, quiet_tune
from jepa_sweeps.space import SearchSpace, trial_params
from jepa_sweeps.redaction import connectable, redact
from jepa_sweeps.spec import SweepSpec
from jepa_sweeps.storage import (
    TUNE_FOLDER,
    Locations,
    delete_sweep,
    filesystem,
    queue_file,
    report_folder,
    tracking_record,
    write_state,
)
from jepa_sweeps.mailbox import EndTrials, mailbox
from jepa_sweeps.trial import run_trial


class Search(OptunaSearch):
    """``OptunaSearch`` that never trains one configuration twice, and tells Optuna a diverged
    trial (sweep metric NaN) as the worst value.

    Stock ``OptunaSearch`` passes the NaN to ``study.tell``, which Optuna refuses: Ray logs a
    warning and the trial stays RUNNING, unseen by TPE. As the worst value it joins TPE's bad group.

    A suggestion whose validated trial config equals an earlier trial's (the configs MLflow logs)
    is answered with that trial's result — told to Optuna, counted against ``num_samples``, no new
    trial — and ``on_repeat(trial_id, count)`` (the MLflow callback; not pickled) hears of it.
    While that earlier trial still runs, no suggestion is made: the repeat waits for its result.
    A failed trial is forgotten, so its configuration may be suggested and trained again.
    """

    def __init__(self, *args: Any, spec: SweepSpec | None = None, num_samples: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.spec, self.num_samples = spec, num_samples
        self.suggested = 0  # trials started plus repeats answered
        self.trial_keys: dict[str, str] = {}  # trial id -> config key
        self.first: dict[str, str] = {}  # config key -> the trial that trains it
        self.results: dict[str, float] = {}  # trial id -> value told to Optuna
        self.waiting: dict[str, list[Any]] = {}  # running trial id -> Optuna trials repeating it
        self.repeats: dict[str, int] = {}  # trial id -> repeated suggestions answered by it
        self.on_repeat: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "on_repeat"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("on_repeat", None)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def config_key(self, config: dict[str, Any]) -> str:
        cfg = self.spec.trial_for(trial_params(config), check_paths=False)
        return json.dumps(cfg.model_dump(mode="json"), sort_keys=True)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.spec is None:
            return super().suggest(trial_id)
        while True:
            if any(self.waiting.values()):
                return None
            if self.num_samples is not None and self.suggested >= self.num_samples:
                return Searcher.FINISHED
            config = super().suggest(trial_id)
            key = self.config_key(config)
            self.suggested += 1
            earlier = self.first.get(key)
            if earlier is None:
                self.first[key], self.trial_keys[trial_id] = trial_id, key
                return config
            ot_trial = self._ot_trials.pop(trial_id)
            if earlier in self.results:
                self._tell_repeat(ot_trial, earlier)
            else:
                self.waiting.setdefault(earlier, []).append(ot_trial)

    def _tell_repeat(self, ot_trial: Any, earlier: str) -> None:
        self._ot_study.tell(ot_trial, self.results[earlier])
        self.repeats[earlier] = self.repeats.get(earlier, 0) + 1
        if self.on_repeat is not None:
            self.on_repeat(earlier, self.repeats[earlier])

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        value = (result or {}).get(self.metric)
        if isinstance(value, float) and math.isnan(value):
            value = -math.inf if self.mode == "max" else math.inf
            result = {**result, self.metric: value}
        super().on_trial_complete(trial_id, result, error)
        if trial_id not in self.trial_keys:
            return
        if error or value is None:  # nothing to answer a repeat with: the configuration may run again
            self.first.pop(self.trial_keys[trial_id], None)
            for ot_trial in self.waiting.pop(trial_id, []):
                self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.FAIL)
            return
        self.results[trial_id] = float(value)
        for ot_trial in self.waiting.pop(trial_id, []):
            self._tell_repeat(ot_trial, trial_id)


def searcher(spec: SweepSpec) -> Any:
    space = SearchSpace(spec)
    search = Search(
        spec=spec,
        num_samples=spec.num_samples,
        space=space,
        metric=spec.metric,
        mode=spec.mode,
        points_to_evaluate=[space.optuna_params(p) for p in spec.points] or None,
        sampler=optuna.samplers.TPESampler(seed=spec.optuna.seed, n_startup_trials=spec.n_startup_trials),
    )
    search = Repeater(search, repeat=spec.seeds, set_index=True) if spec.seeds > 1 else search
    return BudgetLimiter(search, spec) if spec.budget else search


def scheduler(spec: SweepSpec) -> Any:
    if spec.scheduler.name == "fifo":
        return BudgetScheduler(FIFOScheduler(), spec, []) if spec.budget else FIFOScheduler()
    epochs = spec.trial_for({}).epochs
    asha = ASHAScheduler(
        time_attr="epoch",
        max_t=epochs,
        grace_period=min(spec.scheduler.grace_period, epochs),
        reduction_factor=spec.scheduler.reduction_factor,
        stop_last_trials=False,
    )
    return BudgetScheduler(asha, spec, rungs(spec, epochs)) if spec.budget else asha


def rungs(spec: SweepSpec, epochs: int) -> list[int]:
    """ASHA's milestones (grace period × reduction factor^k below the last epoch)."""
    out, t = [], float(min(spec.scheduler.grace_period, epochs))
    while t < epochs:
        out.append(int(t))
        t *= spec.scheduler.reduction_factor
    return out


def trainable(spec: SweepSpec, loc: Locations) -> Any:
    res = spec.resources
    fn = tune.with_parameters(run_trial, spec=spec, storage=loc.train_path)
    return tune.with_resources(fn, {"cpu": res.driver_cpus, **res.driver_resources})


def build_tuner(spec: SweepSpec, loc: Locations, callbacks: list[Any]) -> tune.Tuner:
    """A new Tuner, or the restored one when this sweep was interrupted (with its callbacks, restored:
    Tune keeps them in its state)."""
    mailbox()
    path = loc.tune_path
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
            max_concurrent_trials=None if spec.budget else spec.resources.max_concurrent_trials,  # else its limiter
            reuse_actors=True,  # a trial driver imports torch once, not once per trial (run_trial)
        ),
        run_config=tune.RunConfig(
            name=TUNE_FOLDER,
            storage_path=loc.folder,
            callbacks=[*callbacks, EndTrials()],
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
        delete_sweep(loc)
        queue_file(loc).unlink(missing_ok=True)
    client = MlflowClient(connectable(loc.tracking_uri))
    experiment_id = ensure_experiment(client, loc.experiment, loc.artifact_root)
    parent = state.get("parent_run_id") if state else None
    if parent is None or not _run_exists(client, parent):
        parent = start_parent_run(
            client,
            experiment_id,
            spec,
            tags={
                names.ROLE_TAG: names.SWEEP_ROLE,
                names.SPEC_DIGEST_TAG: spec.digest(),
                names.GIT_COMMIT_TAG: git_commit(),
                "ray_version": ray.__version__,
                "torch_version": torch.__version__,
            },
        )
    else:
        client.update_run(parent, status="RUNNING")
    write_state(loc, {
        "digest": spec.digest(), "parent_run_id": parent, "experiment_id": experiment_id,
        "tracking": tracking_record(loc.tracking_uri),
    })
    logger = SweepLogger(spec, loc.tracking_uri, experiment_id, parent, queue_file(loc))
    quiet_tune()
    # Accounting logs a trial's cost before the logger closes its run; Tune's JSON results back its ResultGrid.
    callbacks = [Progress(spec), Accounting(spec, logger), logger, JsonLoggerCallback()]
    tuner = build_tuner(spec, loc, callbacks)
    search = _search_of(tuner)
    if search is not None:
        search.on_repeat = logger.note_repeat
    return Session(tuner, client, experiment_id, parent)


def _search_of(tuner: tune.Tuner) -> Search | None:
    """The ``Search`` this tuner will drive, new or restored (Tune keeps it in its tune config)."""
    alg = tuner._local_tuner._tune_config.search_alg
    alg = getattr(alg, "searcher", alg)  # inside a Repeater when seeds > 1
    return alg if isinstance(alg, Search) else None


def _run_exists(client: Any, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def finish_sweep(spec: SweepSpec, loc: Locations, session: Session, results: Any) -> str:
    """Summary table, best encoder as an artifact, parent run closed; returns what to print."""
    from jepa_sweeps.report.build import publish_report
    from jepa_sweeps.tracking import run_name, runs_link, trial_status
    from jepa_sweeps.trial import config_for

    client = session.client
    runs = {
        r.data.tags.get(names.TRIAL_TAG): r
        for r in client.search_runs(
            [session.experiment_id], f"tags.`{names.PARENT_TAG}` = '{session.parent_run_id}'", max_results=10000
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
    header = (f"  {'run':<34} {'status':<14} {'epoch':>5} {spec.metric:>10} {'linear_acc':>10} {'rankme':>8}"
              f" {'wall s':>7} {'loop s':>7} {'start s':>7}")
    lines.append(header)
    for value, name, status, metrics, trial_id in scored[:10]:
        cost = runs[trial_id].data.metrics if trial_id in runs else {}
        lines.append(
            f"  {name:<34} {status:<14} {int(metrics.get('epoch', 0)):>5} {value:>10.4f} "
            f"{metrics.get('linear_acc', float('nan')):>10.4f} {metrics.get('rankme', float('nan')):>8.2f}"
            f" {cost.get('cost_wall_s', float('nan')):>7.0f} {cost.get('cost_loop_s', float('nan')):>7.0f}"
            f" {cost.get('cost_startup_s', float('nan')):>7.0f}"
        )
    lines += ["", *log_totals(spec, client, session.parent_run_id, list(runs.values()))]
    if scored:
        best = scored[0]
        best_run = runs.get(best[4])
        checkpoint = best[3].get("checkpoint_path")
        if best_run is not None and checkpoint:
            _log_encoder(client, best_run.info.run_id, checkpoint, loc.storage)
            client.set_tag(session.parent_run_id, names.BEST_RUN_TAG, best_run.info.run_id)
        client.log_metric(session.parent_run_id, f"best_{spec.metric}", float(best[0]))
    report_line = publish_report(client, session.parent_run_id, report_folder(loc.experiment))
    client.set_terminated(session.parent_run_id, "FINISHED")
    link = redact(runs_link(loc.tracking_uri, session.experiment_id))
    lines += ["", f"MLflow UI:   {ui_hint(loc.tracking_uri)}", f"runs table:  {link}", report_line]
    return "\n".join(lines)


def log_totals(spec: SweepSpec, client: Any, parent_run_id: str, children: list[Any]) -> list[str]:
    """The parent run's compute totals (over every session of a resumed sweep) and budget tag."""
    import time

    from mlflow.entities import Metric, RunTag

    ledger = ledger_for(spec)
    earlier = client.get_run(parent_run_id).data.metrics.get("sweep_wall_s", 0.0)
    totals = sweep_totals(spec, children, earlier + time.time() - ledger.session_started)
    now = int(time.time() * 1000)
    tags = [RunTag(BUDGET_TAG, "budget")] if ledger.ended_by_budget else []
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in totals.items()], tags=tags)
    return cost_lines(spec, totals)


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

    from jepa_sweeps.train import ENCODER_FILE

    fs = filesystem(storage)[0]
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp, ENCODER_FILE)
        with fs.open_input_stream(f"{checkpoint}/{ENCODER_FILE}") as f:
            target.write_bytes(f.read())
        client.log_artifact(run_id, str(target), artifact_path=names.BEST_ENCODER)
