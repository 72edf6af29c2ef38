"""Faults a long sweep meets, injected into real components: a local Ray shared by the module (started
by the runner's own ``init_ray``), real Optuna, real MLflow (SQLite, and an ``mlflow server`` that is
stopped and restarted mid-sweep). Sweeps run in-process through ``run.main``; the fault is injected
by a thread beside it. Two sweeps cover five faults (the killed sweep driver is in test_sweep.py):

- faults: a trial whose optimiser really diverges (diverged), a trial whose data folder is deleted
  after the sweep started (fails), a normal trial, while the tracking server is down from the
  second trial's start until the third has checkpointed an epoch;
- killed_worker: one DDP worker SIGKILLed mid-epoch; the trial resumes from its checkpoint, ends
  exactly as an uninterrupted run, and keeps only ``failures.checkpoints_to_keep`` checkpoints.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import ray
import ray.train
import psutil  # after ray: Ray ships it
import torch
import yaml
from mlflow.tracking import MlflowClient

from jepa_sweeps.run import main
from jepa_sweeps.spec import load_spec
from jepa_sweeps.storage import TRAIN_FOLDER, TUNE_FOLDER
from jepa_sweeps.accounting import COST_KEYS
from jepa_sweeps.sweep import Search
from jepa_sweeps.train import LocalHooks, train
from jepa_sweeps.trial import delete_untracked_checkpoints
from tests.distributed_utils import run_distributed
from tests.fake_datasets import write_imagefolder
from tests.conftest import MlflowServer

BASE_TRIAL = {
    "optim": {"batch_size": 64, "lr": 2.0e-3},
    "views": {"n_global": 2, "n_local": 2},
    "eval": {"final_probe_epochs": 20},
}


def _wait(condition: Callable[[], bool], stop: threading.Event, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.3)
    return False


class Beside:
    """Runs ``inject(stop)`` in a thread while the sweep runs in the main thread; re-raises its error."""

    def __init__(self, inject: Callable[[threading.Event], None]):
        self.stop, self.errors = threading.Event(), []
        self.thread = threading.Thread(target=self._run, args=(inject,), daemon=True)

    def _run(self, inject: Callable[[threading.Event], None]) -> None:
        try:
            inject(self.stop)
        except BaseException as err:  # noqa: BLE001 - reported by __exit__
            self.errors.append(err)

    def __enter__(self) -> Beside:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(120)
        if self.errors and exc[0] is None:
            raise self.errors[0]


def write_spec(folder: Path, spec: dict[str, Any]) -> Path:
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def checkpoints(train_dir: Path) -> list[Path]:
    """The checkpoint folders of every Train run of a sweep (not Train's ``checkpoint_*.json``)."""
    return sorted(p for p in train_dir.glob("train-*/checkpoint_*") if p.is_dir())


def child_runs(client: MlflowClient, experiment: str) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], order_by=["start_time ASC"])
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


# --- faults 3, 4, 5: tracking server restarted, a diverged trial, a failing trial --------------------

@pytest.mark.slow
@pytest.mark.ray
def test_failing_and_diverging_trials_during_a_tracking_outage(
    mlflow_server: MlflowServer, local_ray: None, home: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    """Trial 1's optimiser diverges (AdamW with lr·weight_decay = 100 multiplies the weights by -99
    each step until they overflow): it ends as diverged, with the reason, and Optuna records the
    worst value. Trial 2's data folder is deleted once trial 1 started: it fails with its error in
    MLflow. Trial 3 finishes: the sweep went on after both. The tracking server is stopped when
    trial 2 starts and restarted once trial 3 has checkpointed an epoch: trial 2's end and trial 3's
    start and epochs are logged while it is down, and every epoch still arrives exactly once."""
    folder = write_imagefolder(tmp_path / "vanishing", per_class=4)
    spec = write_spec(tmp_path, {
        "name": "faults",
        "trial": {**BASE_TRIAL, "epochs": 2, "data": {"name": "digits", "path": str(folder)},
                  "optim": {**BASE_TRIAL["optim"], "warmup_epochs": 0, "lr_scaling": "none"}},
        "search": {
            "data.name": {"choice": ["digits", "imagefolder"]},
            "optim.lr": {"choice": [2.0e-3, 10.0]},
            "optim.weight_decay": {"choice": [0.05, 10.0]},
        },
        "points": [
            {"data.name": "digits", "optim.lr": 10.0, "optim.weight_decay": 10.0},  # diverges
            {"data.name": "imagefolder", "optim.lr": 2.0e-3, "optim.weight_decay": 0.05},  # folder deleted
            {"data.name": "digits", "optim.lr": 2.0e-3, "optim.weight_decay": 0.05},  # finishes
        ],
        "num_samples": 3,
        "scheduler": {"name": "fifo"},
        "failures": {"max_failures": 0},  # a missing folder stays missing: no worker-group restarts
        "mlflow": {"tracking_uri": mlflow_server.uri},
    })
    train_dir = home / "ray_results" / "faults" / TRAIN_FOLDER
    events: dict[str, float] = {}

    def disturb(stop: threading.Event) -> None:
        client = MlflowClient(mlflow_server.uri)
        assert _wait(lambda: len(child_runs(client, "faults")) >= 1, stop, 300), "trial 1 never started"
        shutil.rmtree(folder)  # long before trial 2 starts
        events["deleted"] = time.time()
        assert _wait(lambda: len(child_runs(client, "faults")) >= 2, stop, 300), "trial 2 never started"
        mlflow_server.stop()
        events["stopped"] = time.time()
        # Trial 3 checkpointed (and reported) epoch 1 while the server was down; restart it.
        _wait(lambda: bool(checkpoints(train_dir)), stop, 300)
        events["trial3_epoch1"] = time.time()
        mlflow_server.start()
        mlflow_server.wait_healthy()
        events["restarted"] = time.time()

    mlflow_server.wait_healthy()
    caplog.set_level(logging.WARNING, logger="jepa_sweeps.retry")
    started = time.time()
    with Beside(disturb):
        rc = main([str(spec)])
    out = capsys.readouterr().out
    print(f"faults sweep: {time.time() - started:.0f} s; at s: {({k: round(v - started) for k, v in events.items()})}")
    assert rc == 0, out
    assert set(events) == {"deleted", "stopped", "trial3_epoch1", "restarted"}, events
    assert "3 trials (1 diverged, 1 failed, 1 finished)" in out, out
    assert any("MLflow tracking unreachable" in r.getMessage() for r in caplog.records)

    client = MlflowClient(mlflow_server.uri)
    diverged, failed, finished = runs = child_runs(client, "faults")
    assert len(runs) == 3 and len({r.data.tags["jepa.trial_id"] for r in runs}) == 3

    # fault 5: the failing trial's error is in MLflow (the sweep went on: trial 3 finished)
    assert failed.data.tags["jepa.status"] == "failed" and failed.info.status == "FAILED"
    assert str(folder) in failed.data.tags["jepa.error"], failed.data.tags["jepa.error"]

    # fault 4: diverged, with its reason; logged as finished (it did not crash; trial 2 ran)
    assert diverged.data.tags["jepa.status"] == "diverged" and diverged.info.status == "FINISHED"
    reason = diverged.data.tags["jepa.reason"]
    assert re.fullmatch(r"non-finite [a-z_, ]*\bloss\b[a-z_, ]* at epoch 1 step \d+", reason), reason
    assert "knn_acc" not in diverged.data.metrics  # no stale evaluation reported as its result

    # fault 3: every report of every trial arrived exactly once despite the outage
    assert finished.data.tags["jepa.status"] == "finished" and finished.info.status == "FINISHED"
    for run in runs:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.info.run_name, key, steps)
    loss = client.get_metric_history(finished.info.run_id, "loss")
    assert [m.step for m in loss] == [1, 2]
    assert events["stopped"] < loss[0].timestamp / 1000 < events["restarted"]  # logged while down
    assert [m.step for m in client.get_metric_history(finished.info.run_id, "knn_acc")] == [1, 2]
    assert [m.step for m in client.get_metric_history(diverged.info.run_id, "diverged")] == [1]
    assert "trial_config.json" in {a.path for a in client.list_artifacts(finished.info.run_id)}
    # a failed trial trained nothing: it logs only what it cost (its start-up held resources)
    assert set(failed.data.metrics) <= set(COST_KEYS) and failed.data.metrics["cost_loop_s"] == 0

    # Optuna was told: the worst value (not NaN, which Optuna refuses, leaving the trial RUNNING) for
    # the diverged trial, which TPE therefore ranks below every real result; FAIL for the failed one.
    search = Search()
    search.restore_from_dir(str(home / "ray_results" / "faults" / TUNE_FOLDER))
    study_trials = search._ot_study.trials
    assert [t.state for t in study_trials] == [
        optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE
    ]
    assert study_trials[0].value == -math.inf and math.isfinite(study_trials[2].value)


# --- faults 1 and 6: a DDP worker killed mid-epoch; checkpoint retention --------------------------

def _train_workers() -> list[psutil.Process]:
    """The Ray Train worker processes of this test's Ray (descendants of this process only)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _reference_run(rank: int, world: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """The same trial, uninterrupted, in 2 plain gloo processes."""
    from jepa_sweeps.config import TrialConfig

    return train(TrialConfig.model_validate(cfg), LocalHooks())


@pytest.mark.slow
@pytest.mark.ray
def test_killed_worker_resumes_exactly_and_old_checkpoints_are_deleted(
    local_ray: None, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DDP worker SIGKILLed after epoch 1's checkpoint, before epoch 2's: Train restarts the worker
    group from epoch 1's checkpoint and the trial finishes. Its final metrics equal, bit for bit,
    those of the same trial run uninterrupted on 2 gloo processes: with 2 ranks every all-reduce is
    one commutative float addition, views depend only on (seed, epoch, image), and the checkpoint
    holds the whole state, so nothing depends on the interruption. (A 1-process run is equal only to
    float32 rounding: its sums are ordered differently.) 3 epochs with ``checkpoints_to_keep: 2``
    leave exactly the last 2 checkpoints."""
    spec = write_spec(tmp_path, {
        "name": "killed_worker",
        "trial": {**BASE_TRIAL, "epochs": 3, "threads": 1},
        "search": {"objective.lam": {"loguniform": [0.01, 0.5]}},
        "points": [{"objective.lam": 0.05}],
        "num_samples": 1,
        "optuna": {"n_startup_trials": 0},
        "scheduler": {"name": "fifo"},
        "failures": {"max_failures": 2, "checkpoints_to_keep": 2},
    })
    train_dir = home / "ray_results" / "killed_worker" / TRAIN_FOLDER
    seen: dict[str, Any] = {}

    def reported_epochs() -> list[int]:
        """Epochs that reached the sweep driver: reported by every rank, checkpoint committed."""
        if not (home / "mlflow.db").exists():
            return []
        client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
        runs = child_runs(client, "killed_worker")
        return [m.step for m in client.get_metric_history(runs[0].info.run_id, "knn_acc")] if runs else []

    def kill_a_worker(stop: threading.Event) -> None:
        # Not as soon as a checkpoint folder appears: rank 0 uploads it before the other rank has
        # reported, and a worker lost then makes Train restart from the previous checkpoint.
        assert _wait(lambda: bool(reported_epochs()), stop, 600), "epoch 1 never reported"
        workers = _train_workers()
        seen["reported_at_kill"] = reported_epochs()
        assert len(workers) == 2, workers
        workers[-1].send_signal(signal.SIGKILL)
        seen["killed"] = workers[-1].pid
        old = {w.pid for w in workers}
        assert _wait(lambda: len({w.pid for w in _train_workers()} - old) == 2, stop, 600), "no restart"
        seen["restarted"] = True

    started = time.monotonic()
    with Beside(kill_a_worker):
        rc = main([str(spec)])
    out = capsys.readouterr().out
    print(f"killed_worker sweep: {time.monotonic() - started:.0f} s")
    assert rc == 0, out
    assert seen.get("restarted") and seen["reported_at_kill"] == [1], seen  # killed during epoch 2

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (run,) = child_runs(client, "killed_worker")
    assert run.data.tags["jepa.status"] == "finished" and run.info.status == "FINISHED"
    # resumed from epoch 1's checkpoint: epoch 1 was not trained (and reported) twice
    assert [m.step for m in client.get_metric_history(run.info.run_id, "knn_acc")] == [1, 2, 3]

    cfg = load_spec(spec).trial_for({"objective.lam": 0.05})
    reference = run_distributed(_reference_run, cfg.model_dump(mode="json"))[0]
    compared = ["loss", "inv_loss", "reg_loss", "knn_acc", "linear_acc", "rankme", "val_inv_loss", "val_reg_loss",
                "z_std", "final_linear_acc"]
    assert {k: run.data.metrics[k] for k in compared} == {k: reference[k] for k in compared}

    # fault 6: only the last checkpoints_to_keep checkpoints remain, and little else
    kept = checkpoints(train_dir)
    epochs = [torch.load(c / "state.pt", weights_only=True)["epoch"] for c in kept]
    assert epochs == [2, 3], epochs

    def size(path: Path) -> int:
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

    (train_run,) = train_dir.glob("train-*")
    assert size(train_run) - sum(size(c) for c in kept) < 1 << 20


def test_checkpoints_train_does_not_track_are_deleted_when_a_trial_ends(tmp_path: Path) -> None:
    """Fault 6 without its timing: a checkpoint rank 0 uploaded before a worker was lost mid-report
    is never registered by Train, so its retention never deletes it; the trial driver does."""
    run = tmp_path / "train-x"
    tracked = [run / "checkpoint_2", run / "checkpoint_3"]
    for folder in [run / "checkpoint_1", *tracked]:
        folder.mkdir(parents=True)
        (folder / "state.pt").write_bytes(b"weights")
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    result = ray.train.Result(metrics={}, checkpoint=None, error=None, path=str(run),
                              best_checkpoints=[(ray.train.Checkpoint(str(c)), {}) for c in tracked])
    delete_untracked_checkpoints(result)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_2", "checkpoint_3", "checkpoint_manager_snapshot.json"]


@pytest.mark.slow
@pytest.mark.ray
def test_stopped_trials_free_their_resources_and_drivers_are_reused(
    local_ray: None, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Train's placement-group cleaner is not started (``trial.Trainer``) and Tune reuses trial
    drivers (``reuse_actors``), so what a trial ASHA stopped left running is ended by the sweep's
    ``Mailbox``: after a sweep in which ASHA stopped a trial at its first rung, no placement group
    or Train actor is left, every CPU is free again, and fewer trial drivers ran than trials."""
    from ray.util.placement_group import placement_group_table
    from ray.util.state import list_actors

    spec = write_spec(tmp_path, {
        "name": "stopped",
        "trial": {**BASE_TRIAL, "epochs": 2, "threads": 1},
        "search": {"objective.lam": {"choice": [0.0, 0.05, 0.1]}},
        "points": [{"objective.lam": 0.05}, {"objective.lam": 0.0}, {"objective.lam": 0.1}],
        "num_samples": 3,
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
    })
    def drivers() -> set[str]:
        return {a.actor_id for a in list_actors(limit=10000) if a.class_name == "ImplicitFunc"}

    earlier = drivers()  # of the module's other sweeps
    assert main([str(spec)]) == 0, capsys.readouterr().out
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    statuses = [r.data.tags["jepa.status"] for r in child_runs(client, "stopped")]
    assert len(statuses) == 3 and "stopped early" in statuses, statuses  # λ = 0 collapses below λ = 0.05

    def ended() -> bool:
        live = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10000)
                if a.class_name in ("TrainController", "RayTrainWorker")]
        groups = [g["state"] for g in placement_group_table().values()]
        return not live and set(groups) <= {"REMOVED"} and ray.available_resources().get("CPU") == ray.cluster_resources()["CPU"]

    assert _wait(ended, threading.Event(), 60), (placement_group_table(), ray.available_resources())
    assert 1 <= len(drivers() - earlier) < 3, drivers() - earlier
