"""Compute accounting and budgets: what each trial and the whole sweep cost in device-seconds.

A trial *holds* its logical Ray resources (its workers' shares and its driver's) from the moment
its driver starts until it ends; it *trains* while its workers run the training loop (first
epoch to last report, evaluations included). Both are measured in the sweep driver: the trial's
start and end when Tune reports them, the loop's seconds from the workers' reports (``loop_s``).
Device-seconds are resources × seconds: CPU-seconds, and GPU-seconds on GPU trials.

Budget rule (``budget: {device_hours, wall_minutes}``): a new trial starts only if the sweep's
committed cost — what ended trials cost, plus for each running trial the larger of what it has
held so far and the mean cost of an ended trial, plus that mean once more for the new trial —
stays within ``device_hours``, and the elapsed wall time plus the mean wall time of an ended
trial stays within ``wall_minutes``. Before any trial has ended nothing is known about a trial's
cost, so the first trials start (up to ``max_concurrent_trials``). Once the spent budget is
exceeded, running trials stop at the end of their current ASHA rung (FIFO: they finish).

A resumed sweep (``Tuner.restore``) counts its trials' cost and its budget from the resumption:
the ledger lives in the sweep driver's memory.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from jepa_sweeps.spec import SweepSpec

# Per child run at its end; the parent run logs their sums (same names).
COST_KEYS = ("cost_wall_s", "cost_loop_s", "cost_startup_s", "cost_cpu_s", "cost_gpu_s", "cost_loop_cpu_s",
             "cost_loop_gpu_s")
BUDGET_TAG = "jepa.ended_by"


@dataclass
class TrialTime:
    """One trial's clock, in driver wall-clock seconds."""

    started: float
    ended: float | None = None
    first_report: float | None = None  # arrival of the first report
    first_loop_s: float = 0.0  # the loop seconds that report carried
    loop_done: float = 0.0  # loop seconds of earlier worker groups (a restart begins again at 0)
    loop_now: float = 0.0  # loop seconds of the current worker group


@dataclass
class Ledger:
    """The sweep's trials and their cost; one per sweep in the driver process (``ledger_for``)."""

    spec: SweepSpec
    session_started: float = field(default_factory=time.time)
    trials: dict[str, TrialTime] = field(default_factory=dict)
    ended_by_budget: str = ""  # why the budget ended the sweep, once it did

    # -- shares -----------------------------------------------------------------------------
    @property
    def worker_cpus(self) -> float:
        r = self.spec.resources
        return r.workers * r.cpus_per_worker

    @property
    def worker_gpus(self) -> float:
        r = self.spec.resources
        return r.workers * r.gpus_per_worker

    @property
    def trial_cpus(self) -> float:
        return self.worker_cpus + self.spec.resources.driver_cpus

    @property
    def device(self) -> str:
        """What ``device_hours`` counts: GPU-seconds on GPU trials, else CPU-seconds."""
        return "gpu" if self.worker_gpus > 0 else "cpu"

    # -- events -----------------------------------------------------------------------------
    def start(self, trial_id: str, now: float) -> None:
        self.trials.setdefault(trial_id, TrialTime(started=now))

    def result(self, trial_id: str, result: dict[str, Any], now: float) -> None:
        t = self.trials.get(trial_id)
        loop = result.get("loop_s")
        if t is None or not isinstance(loop, (int, float)):
            return
        if t.first_report is None:
            t.first_report, t.first_loop_s = now, float(loop)
        if loop < t.loop_now:  # a new worker group (restart after a failure) counts from 0 again
            t.loop_done += t.loop_now
        t.loop_now = float(loop)

    def end(self, trial_id: str, now: float) -> None:
        t = self.trials.get(trial_id)
        if t is not None and t.ended is None:
            t.ended = now

    # -- costs ------------------------------------------------------------------------------
    def cost(self, trial_id: str, now: float | None = None) -> dict[str, float]:
        t = self.trials[trial_id]
        end = t.ended if t.ended is not None else (now or time.time())
        wall = max(end - t.started, 0.0)
        loop = min(t.loop_done + t.loop_now, wall)
        startup = (t.first_report - t.first_loop_s - t.started) if t.first_report is not None else wall
        return {
            "cost_wall_s": wall,
            "cost_loop_s": loop,
            "cost_startup_s": min(max(startup, 0.0), wall),
            "cost_cpu_s": self.trial_cpus * wall,
            "cost_gpu_s": self.worker_gpus * wall,
            "cost_loop_cpu_s": self.worker_cpus * loop,
            "cost_loop_gpu_s": self.worker_gpus * loop,
        }

    def device_s(self, trial_id: str, now: float) -> float:
        return self.cost(trial_id, now)[f"cost_{self.device}_s"]

    def ended(self) -> list[str]:
        return [k for k, t in self.trials.items() if t.ended is not None]

    def running(self) -> list[str]:
        return [k for k, t in self.trials.items() if t.ended is None]

    def mean_cost(self, key: str) -> float | None:
        done = self.ended()
        return sum(self.cost(k)[key] for k in done) / len(done) if done else None

    def spent(self, now: float) -> float:
        """Device-seconds held so far by every trial, ended or running."""
        return sum(self.device_s(k, now) for k in self.trials)

    # -- budget -----------------------------------------------------------------------------
    def may_start(self, now: float) -> bool:
        """The budget rule of the module docstring; records why it said no."""
        budget = self.spec.budget
        if budget is None:
            return True
        mean = self.mean_cost(f"cost_{self.device}_s")
        if budget.device_hours is not None and mean is not None:
            committed = sum(self.device_s(k, now) for k in self.ended())
            committed += sum(max(self.device_s(k, now), mean) for k in self.running())
            if committed + mean > budget.device_hours * 3600:
                self.ended_by_budget = (
                    f"budget: device_hours={budget.device_hours:g} would be exceeded by another trial "
                    f"({(committed + mean) / 3600:.4g} {self.device.upper()}-hours committed with it)"
                )
                return False
        if budget.wall_minutes is not None:
            elapsed = now - self.session_started
            wall = self.mean_cost("cost_wall_s") or 0.0
            if elapsed + wall > budget.wall_minutes * 60:
                self.ended_by_budget = (
                    f"budget: wall_minutes={budget.wall_minutes:g} would be exceeded by another trial "
                    f"({(elapsed + wall) / 60:.1f} min with it)"
                )
                return False
        return True

    def exhausted(self, now: float) -> bool:
        budget = self.spec.budget
        if budget is None:
            return False
        over_device = budget.device_hours is not None and self.spent(now) > budget.device_hours * 3600
        over_wall = budget.wall_minutes is not None and now - self.session_started > budget.wall_minutes * 60
        return over_device or over_wall


LEDGERS: dict[str, Ledger] = {}


def ledger_for(spec: SweepSpec) -> Ledger:
    """The driver's one ledger of this sweep. Tune pickles its searcher and scheduler with the
    experiment state; their unpickled copies (``Tuner.restore``) find the live ledger here."""
    if spec.name not in LEDGERS:
        LEDGERS[spec.name] = Ledger(spec)
    return LEDGERS[spec.name]


class BudgetLimiter(ConcurrencyLimiter):
    """Tune's concurrency limit plus the budget: ``suggest`` says FINISHED once another trial
    would exceed it, which ends the search while running trials go on."""

    def __init__(self, searcher: Searcher, spec: SweepSpec) -> None:
        super().__init__(searcher, max_concurrent=spec.resources.max_concurrent_trials)
        self.spec = spec

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if len(self.live_trials) < self.max_concurrent and not ledger_for(self.spec).may_start(time.time()):
            return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        ledger_for(self.spec).end(trial_id, time.time())  # before the next ``suggest`` asks
        super().on_trial_complete(trial_id, result=result, error=error)


class BudgetScheduler(TrialScheduler):
    """Wraps ASHA or FIFO: once the budget is spent, a running trial stops at the end of its
    current rung (ASHA's milestones; FIFO has none, so its trials finish)."""

    def __init__(self, inner: TrialScheduler, spec: SweepSpec, rungs: list[int]) -> None:
        super().__init__()
        self.inner, self.spec, self.rungs = inner, spec, set(rungs)

    @property
    def metric(self) -> str | None:
        return self.inner.metric

    @property
    def supports_buffered_results(self) -> bool:
        return self.inner.supports_buffered_results

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return self.inner.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self.inner.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.inner.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision = self.inner.on_trial_result(tune_controller, trial, result)
        ledger = ledger_for(self.spec)
        if decision == TrialScheduler.CONTINUE and int(result.get("epoch", 0)) in self.rungs:
            if ledger.exhausted(time.time()):
                budget = self.spec.budget
                ledger.ended_by_budget = ledger.ended_by_budget or (
                    f"budget spent (device_hours={budget.device_hours}, wall_minutes={budget.wall_minutes}): "
                    "running trials stopped at their rung"
                )
                return TrialScheduler.STOP
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self.inner.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self.inner.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        return self.inner.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return self.inner.debug_string()

    def save(self, checkpoint_path: str) -> None:
        self.inner.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.inner.restore(checkpoint_path)


class Accounting(Callback):
    """Keeps the ledger and, as each trial ends, logs its cost on its child run. Put it before
    the ``SweepLogger`` in the callbacks, whose ``log_trial_end`` closes the run."""

    def __init__(self, spec: SweepSpec, logger: Any) -> None:
        self.spec, self.logger = spec, logger

    def setup(self, **info: Any) -> None:
        ledger = ledger_for(self.spec)
        ledger.session_started = time.time()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        ledger_for(self.spec).start(trial.trial_id, time.time())

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        ledger_for(self.spec).result(trial.trial_id, result, time.time())

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial)

    def _ended(self, trial: Any) -> None:
        from mlflow.entities import Metric

        ledger = ledger_for(self.spec)
        if trial.trial_id not in ledger.trials:
            return
        ledger.end(trial.trial_id, time.time())
        run_id = self.logger.runs.get(trial.trial_id)
        if run_id is None:
            return
        now = int(time.time() * 1000)
        step = int((trial.last_result or {}).get("epoch", 0))
        cost = ledger.cost(trial.trial_id)
        self.logger.client.log_batch(run_id, metrics=[Metric(k, round(v, 3), now, step) for k, v in cost.items()])


def sweep_totals(spec: SweepSpec, children: list[Any], wall_s: float) -> dict[str, float]:
    """The parent run's totals: sums of the children's costs, the sweep's wall time, the
    device-seconds it held (its ``max_concurrent_trials`` trials' resources for its wall time) and
    its busy fraction (training-loop device-seconds ÷ those held)."""
    totals = {k: sum(float(c.data.metrics.get(k, 0.0)) for c in children) for k in COST_KEYS}
    ledger = ledger_for(spec)
    slots = min(spec.resources.max_concurrent_trials, spec.num_samples * spec.seeds)
    held = slots * (ledger.trial_cpus if ledger.device == "cpu" else ledger.worker_gpus) * wall_s
    loop = totals[f"cost_loop_{ledger.device}_s"]
    return {**totals, "sweep_wall_s": wall_s, f"sweep_held_{ledger.device}_s": held,
            "busy_fraction": loop / held if held > 0 else math.nan}


def cost_lines(spec: SweepSpec, totals: dict[str, float]) -> list[str]:
    """What the summary says about cost (and the budget, when it ended the sweep)."""
    ledger = ledger_for(spec)
    device = ledger.device.upper()
    lines = [
        f"compute: {totals['sweep_wall_s']:.0f} s wall; trials held {totals[f'cost_{ledger.device}_s']:.0f} "
        f"{device}-s and trained {totals[f'cost_loop_{ledger.device}_s']:.0f} {device}-s "
        f"(start-up {totals['cost_startup_s']:.0f} s of {totals['cost_wall_s']:.0f} trial-s); "
        f"busy fraction {totals['busy_fraction']:.2f}"
    ]
    if ledger.ended_by_budget:
        lines.append(f"the budget ended the sweep — {ledger.ended_by_budget}")
    return lines
