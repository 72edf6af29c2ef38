"""Compute accounting, the budget rule, packing, progress lines and the /proc CPU meter, without Ray."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray.tune.experiment import Trial

from benchmarks.cputime import TreeCpu
from jepa_sweeps.accounting import Ledger
from jepa_sweeps.config import ConfigError
from jepa_sweeps.packing import pack
from jepa_sweeps.progress import Progress
from jepa_sweeps.spec import load_spec, parse_spec
from tests.test_sweep import SMOKE


def spec(**extra: object):
    return parse_spec({"name": "acct", "num_samples": 6, **extra})


def test_costs_follow_the_shares_and_restarts() -> None:
    ledger = Ledger(spec(resources={"workers": 2, "cpus_per_worker": 0.5, "driver_cpus": 0.5}))
    ledger.start("a", 100.0)
    ledger.result("a", {"loop_s": 4.0}, 114.0)  # the loop began at 110: 10 s of start-up
    ledger.result("a", {"loop_s": 8.0}, 118.0)
    ledger.result("a", {"loop_s": 3.0}, 125.0)  # a new worker group counts from 0 again
    ledger.end("a", 130.0)
    cost = ledger.cost("a")
    assert cost["cost_wall_s"] == 30.0 and cost["cost_startup_s"] == 10.0 and cost["cost_loop_s"] == 11.0
    assert cost["cost_cpu_s"] == 1.5 * 30.0 and cost["cost_loop_cpu_s"] == 1.0 * 11.0 and cost["cost_gpu_s"] == 0.0


def test_budget_rule() -> None:
    ledger = Ledger(spec(budget={"device_hours": 120 / 3600}))  # 120 CPU-s; a trial holds 1.5 CPU
    assert ledger.may_start(0.0)
    ledger.start("a", 0.0)
    ledger.start("b", 0.0)
    assert ledger.may_start(1000.0), "no trial has ended: nothing is known about a trial's cost yet"
    ledger.end("a", 30.0)  # costs 45 CPU-s; b (running) counts as at least as much
    assert ledger.may_start(30.0) is False  # 45 + 45 + 45 > 120
    assert "device_hours" in ledger.ended_by_budget
    assert not ledger.exhausted(45.0) and ledger.exhausted(60.0)  # 45 + 1.5 × 60 > 120

    timed = Ledger(spec(budget={"wall_minutes": 1.0}))
    timed.session_started = 0.0
    timed.start("a", 0.0)
    timed.end("a", 20.0)
    assert timed.may_start(30.0) and not timed.may_start(45.0)  # 45 + 20 s > 60 s


def test_budget_validation() -> None:
    with pytest.raises(ConfigError, match="device_hours"):
        spec(budget={})
    with pytest.raises(ConfigError, match="budget.wall_minutes"):
        spec(budget={"wall_minutes": 0})


def test_pack_auto_on_two_cpus_and_on_gpus() -> None:
    packed = pack(spec(resources={"pack": "auto"}), cpus=2.0, gpus=0.0).resources
    assert (packed.max_concurrent_trials, packed.cpus_per_worker, packed.driver_cpus) == (2, 0.45, 0.1)
    assert packed.max_concurrent_trials * (2 * packed.cpus_per_worker + packed.driver_cpus) <= 2.0
    assert pack(spec(resources={"pack": "off"}), 64.0, 0.0).resources.max_concurrent_trials == 1
    one = pack(spec(resources={"pack": "auto", "workers": 1, "gpus_per_worker": 1}), 16.0, 4.0).resources
    assert (one.gpus_per_worker, one.max_concurrent_trials) == (0.5, 6)  # two one-worker trials per GPU
    ddp = pack(spec(resources={"pack": "auto", "workers": 2, "gpus_per_worker": 1}), 16.0, 4.0).resources
    assert (ddp.gpus_per_worker, ddp.max_concurrent_trials) == (1.0, 2)  # ranks on distinct GPUs


def test_tree_cpu_counts_a_child_that_exited() -> None:
    with TreeCpu(interval=0.05) as cpu:
        begin = time.time()
        subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"],
                       check=True)
        end = time.time()
    assert cpu.between(begin, end) >= 0.5


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream", [io.StringIO, Terminal])
def test_progress_lines_from_tune_trials(stream: type) -> None:
    """Tune's own ``Trial`` objects (stubs need no Ray): event lines in order; the status line
    is redrawn in place on a terminal only."""
    out = stream()
    progress = Progress(load_spec(SMOKE), out)
    trial = Trial("run_trial", config={"objective.lam": 0.1}, trial_id="t1", stub=True)
    progress.on_trial_start(0, [trial], trial)
    progress.on_trial_result(0, [trial], trial, {"epoch": 1, "knn_acc": 0.9})
    trial.update_last_result({"epoch": 2, "knn_acc": 0.91})
    progress.on_trial_complete(0, [trial], trial)
    progress.on_experiment_end([trial])
    text = out.getvalue()
    lines = [line.rsplit("\r\x1b[K", 1)[-1] for line in text.splitlines()]
    events = [re.sub(r"\(\d+ s\)", "(s)", line.split("] ", 1)[1]) for line in lines if "trial 1/2" in line]
    assert events == ["trial 1/2 sigreg-lam0.1-g2l2-b64-s0 started",
                      "trial 1/2 sigreg-lam0.1-g2l2-b64-s0 epoch 1/2 knn_acc 0.9000 (s)",
                      "trial 1/2 sigreg-lam0.1-g2l2-b64-s0 finished after 2 epoch(s), knn_acc 0.9100 (s)"]
    assert "status: 1 done, 0 running, 1 queued of 2; best knn_acc 0.9000" in text
    assert ("\r\x1b[K" in text) is (stream is Terminal)


def test_budget_stops_running_trials_at_ashas_rungs() -> None:
    from jepa_sweeps.sweep import rungs

    lam = load_spec(Path(SMOKE).with_name("lambda.yaml"))  # grace 2, reduction factor 3, 10 epochs
    assert rungs(lam, 10) == [2, 6]
