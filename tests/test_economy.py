"""Sweep economy end to end: live progress lines on a non-TTY, compute accounting and budgets.

Each test runs ``python -m jepa_sweeps.run`` in a subprocess with pipes (not a terminal), with its
own JEPA_SWEEPS_HOME and Ray temp folder, as a user's sweep or a ``ray job`` would run it.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from jepa_sweeps.accounting import COST_KEYS
from tests.conftest import clean_env, kill_matching
from tests.test_sweep import SMOKE

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def run_sweep(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, str]:
    home = tmp_path / "home"
    ray_tmp = f"/tmp/re{tmp_path.name[-8:]}"
    env = clean_env(JEPA_SWEEPS_HOME=str(home), RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled")
    command = [sys.executable, "-m", "jepa_sweeps.run", SMOKE, *[a for o in overrides for a in ("--set", o)]]
    try:
        done = subprocess.run(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, timeout=900)
    finally:
        kill_matching(ray_tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, f"sqlite:///{home / 'mlflow.db'}"


EVENT = re.compile(r"^\[\s*[\dmhs]+\] trial (\d+)/(\d+) (\S+) (started|epoch \d+/\d+|finished|stopped early|diverged|failed)")


def events(stdout: str) -> list[tuple[int, str]]:
    """(trial number, event) per event line, in printed order."""
    out = []
    for line in stdout.splitlines():
        m = EVENT.match(line)
        if m:
            out.append((int(m.group(1)), m.group(4).split(" ")[0]))
    return out


def test_progress_lines_on_a_pipe(tmp_path: Path) -> None:
    """Two trials of the smoke sweep, one at a time: each prints one start line, one line per
    epoch and one end line, in that order; Tune prints none of its own tables or hints."""
    done, _ = run_sweep(tmp_path)
    seen = events(done.stdout)
    assert [e for e in seen if e[1] != "epoch"] == [(1, "started"), (1, "finished"), (2, "started"), (2, "finished")], \
        done.stdout
    assert [n for n, e in seen if e == "epoch"] == [1, 1, 2, 2]
    assert re.search(r"status: 2 done, 0 running, 0 queued of 2; best knn_acc", done.stdout)
    output = done.stdout + done.stderr
    for banner in ("View detailed results here", "tensorboard", "Trial status", "╭", "Trial name", "Current time:"):
        assert banner not in output, banner
    assert "\r" not in done.stdout, "no in-place status redraws when stdout is not a terminal"


def test_budget_admits_two_of_three_trials(tmp_path: Path) -> None:
    """A 3-trial sweep whose budget fits only 2 trials.

    Deterministic despite timing noise: two trials may run at once (1 worker × 0.5 CPU + 0.25 CPU
    driver each, on 2 CPUs), so both start before either ends, when the rule has no estimate of
    a trial's cost yet and lets the first ``max_concurrent_trials`` trials start. The budget is
    3.6 ms of CPU time, below what any trial can cost, so once a trial has ended the committed
    cost plus the estimate for a third trial exceeds it whatever the seconds measured: the third
    never starts. FIFO has no rungs, so the two running trials finish.
    """
    done, uri = run_sweep(tmp_path, "num_samples=3", "resources.workers=1", "resources.cpus_per_worker=0.5",
                          "resources.driver_cpus=0.25", "resources.max_concurrent_trials=2",
                          "budget.device_hours=0.000001")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("jepa.role") == "sweep")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2, done.stdout
    for key in COST_KEYS:
        values = [c.data.metrics[key] for c in children]
        assert parent.data.metrics[key] == pytest.approx(sum(values), abs=1e-6), key
    for child in children:
        m = child.data.metrics
        assert 0 < m["cost_loop_s"] < m["cost_wall_s"] and 0 < m["cost_startup_s"] < m["cost_wall_s"]
        assert m["cost_cpu_s"] == pytest.approx(0.75 * m["cost_wall_s"], rel=1e-3, abs=1e-2)
        assert m["cost_loop_cpu_s"] == pytest.approx(0.5 * m["cost_loop_s"], rel=1e-3, abs=1e-2)
        assert m["cost_gpu_s"] == 0
    busy = parent.data.metrics["busy_fraction"]
    assert math.isfinite(busy) and 0 < busy < 1
    assert parent.data.tags["jepa.ended_by"] == "budget"
    assert "the budget ended the sweep" in done.stdout and "device_hours=1e-06" in done.stdout
    assert "busy fraction" in done.stdout
    assert len([e for e in events(done.stdout) if e[1] == "started"]) == 2
