"""Live progress of a sweep: one line per trial event and a compact status line.

Events: a trial started, each epoch with the sweep metric, and its end (finished, stopped early,
diverged, failed) with its seconds. The status line (trials done/running/queued, best so far,
elapsed, estimated remaining) is redrawn in place on a terminal; elsewhere (``ray job`` logs, a
pipe) it is printed as a plain line after each trial's end and at most once a minute otherwise.
Tune's own tables, banners and hints are switched off by ``quiet_tune``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from jepa_sweeps.config import ConfigError, TrialConfig
from jepa_sweeps.spec import SweepSpec

PLAIN_STATUS_EVERY_S = 60.0
TTY_STATUS_EVERY_S = 1.0


def quiet_tune() -> None:
    """Silence what Tune prints for itself: its progress tables and result dicts (the "new output"
    reporter), the "View detailed results here" banner, and the TensorBoard hint (with the CSV and
    JSON result files beside it: this product logs to MLflow and reads none of them)."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # the sweep adds Tune's JSON logger itself
    logging.getLogger("ray.tune").setLevel(logging.WARNING)  # "Wrote the latest version of all result files ..."
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory ..."


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress(Callback):
    """A Tune callback in the sweep driver that writes the sweep's progress to ``stream``."""

    def __init__(self, spec: SweepSpec, stream: TextIO | None = None) -> None:
        self.spec = spec
        self.stream = stream
        self.total = spec.num_samples * spec.seeds
        self.numbers: dict[str, int] = {}  # trial id → its number in start order
        self.configs: dict[str, TrialConfig | None] = {}
        self.started: dict[str, float] = {}
        self.walls: list[float] = []  # seconds of ended trials
        self.ended: set[str] = set()
        self.best: tuple[float, str] | None = None
        self.began = time.time()
        self.status_shown = 0.0
        self.status_drawn = False
        self.last_plain_status = ""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "stream"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restored with the Tuner (``Tuner.restore``): a resumed sweep writes to its own stdout."""
        self.__dict__.update(state, stream=None)

    @property
    def out(self) -> TextIO:
        return self.stream or sys.stdout

    @property
    def tty(self) -> bool:
        return self.out.isatty()

    def setup(self, **info: Any) -> None:
        self.began = time.time()

    # -- output -----------------------------------------------------------------------------
    def line(self, text: str) -> None:
        """An event line; on a terminal it replaces the status line, which is drawn again below."""
        stamp = f"[{duration(time.time() - self.began):>6}] "
        if self.tty and self.status_drawn:
            self.out.write("\r\x1b[K")
            self.status_drawn = False
        self.out.write(stamp + text + "\n")
        if self.tty:
            self.draw_status(force=True)
        self.out.flush()

    def status(self) -> str:
        from jepa_sweeps.accounting import ledger_for

        running = [t for t in self.started if t not in self.ended]
        done = len(self.ended)
        budget = ledger_for(self.spec).ended_by_budget
        queued = 0 if budget else max(self.total - done - len(running), 0)
        best = f"best {self.spec.metric} {self.best[0]:.4f} ({self.best[1]})" if self.best else "no result yet"
        elapsed = time.time() - self.began
        text = (f"status: {done} done, {len(running)} running, {queued} queued of {self.total}"
                + (" (the budget stops new trials)" if budget else "") + f"; {best}; elapsed {duration(elapsed)}")
        if self.walls and (queued or running):
            mean = sum(self.walls) / len(self.walls)
            slots = max(1, min(self.spec.resources.max_concurrent_trials, self.total))
            left = [max(mean - (time.time() - self.started[t]), 0.0) for t in running]
            remaining = (sum(left) + queued * mean) / slots
            text += f", about {duration(remaining)} left"
        return text

    def draw_status(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.status_shown < (TTY_STATUS_EVERY_S if self.tty else PLAIN_STATUS_EVERY_S):
            return
        self.status_shown = now
        if self.tty:
            self.out.write("\r\x1b[K" + self.status())
            self.status_drawn = True
        else:
            text = self.status()
            if text != self.last_plain_status:
                self.out.write(f"[{duration(now - self.began):>6}] {text}\n")
                self.last_plain_status = text
        self.out.flush()

    # -- Tune events --------------------------------------------------------------------------
    def config(self, trial: Any) -> TrialConfig | None:
        """The trial's config, or None for one the trial itself will reject (it still gets lines)."""
        from jepa_sweeps.trial import config_for

        if trial.trial_id not in self.configs:
            try:
                self.configs[trial.trial_id] = config_for(self.spec, trial.config, check_paths=False)
            except ConfigError:
                self.configs[trial.trial_id] = None
        return self.configs[trial.trial_id]

    def name(self, trial: Any) -> str:
        from jepa_sweeps.tracking import run_name

        number = self.numbers.setdefault(trial.trial_id, len(self.numbers) + 1)
        cfg = self.config(trial)
        return f"trial {number}/{self.total} {run_name(cfg) if cfg else trial.trial_id}"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.time()
        self.ended.discard(trial.trial_id)
        self.line(f"{self.name(trial)} started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.spec.metric)
        epoch = int(result.get("epoch", 0))
        cfg = self.config(trial)
        epochs = cfg.epochs if cfg else "?"
        seconds = time.time() - self.started.get(trial.trial_id, self.began)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
        if isinstance(value, (int, float)) and math.isfinite(value):
            sign = 1 if self.spec.mode == "max" else -1
            if self.best is None or sign * value > sign * self.best[0]:
                self.best = (float(value), self.name(trial).split(" ", 2)[2])
        self.line(f"{self.name(trial)} epoch {epoch}/{epochs} {self.spec.metric} {shown} ({seconds:.0f} s)")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finish(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finish(trial, failed=True)

    def finish(self, trial: Any, failed: bool) -> None:
        from jepa_sweeps.tracking import trial_status

        seconds = time.time() - self.started.get(trial.trial_id, self.began)
        self.ended.add(trial.trial_id)
        self.walls.append(seconds)
        last = trial.last_result or {}
        cfg = self.config(trial)
        status = trial_status(cfg, last, failed) if cfg else "failed"
        value = last.get(self.spec.metric)
        metric = f", {self.spec.metric} {value:.4f}" if isinstance(value, (int, float)) and not failed else ""
        self.line(f"{self.name(trial)} {status} after {int(last.get('epoch', 0))} epoch(s){metric} ({seconds:.0f} s)")
        if not self.tty:
            self.draw_status(force=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.draw_status()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.tty and self.status_drawn:
            self.out.write("\r\x1b[K" + self.status() + "\n")
            self.status_drawn = False
        elif not self.tty:
            self.draw_status(force=True)
        self.out.flush()
