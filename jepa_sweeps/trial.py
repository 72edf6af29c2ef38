"""One trial = one Ray Train ``TorchTrainer`` run of the training core, driven from Tune.

Ray 2.60 (Train V2) cannot put a trainer inside ``Tuner``; instead a Tune function trainable
(the trial driver) builds the trainer and calls ``fit()``, and ``ForwardToTune`` passes rank 0's
reports from the Train controller back to the driver, which reports them to Tune. The Train run
is named after the Tune trial id under a fixed storage path, so a restarted trial resumes from
its last checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import torch
from pydantic import ValidationError
from ray import tune
from ray.actor import ActorHandle
from ray.train import Checkpoint, CheckpointConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2.api.callback import UserCallback

from jepa_sweeps.config import ConfigError, TrialConfig, describe, trial_config
from jepa_sweeps.mailbox import MAILBOX, HoldRun
from jepa_sweeps.space import trial_params
from jepa_sweeps.spec import SweepSpec
from jepa_sweeps.train import load_checkpoint, save_checkpoint, train


def config_for(spec: SweepSpec, config: dict[str, Any], check_paths: bool = True) -> TrialConfig:
    """The trial config of a Tune trial: searched values on the base, seed offset by the repeat.

    Raises ``ConfigError`` (e.g. its data folder vanished since the sweep started): a pydantic
    error raised in a trial does not unpickle in the sweep driver, which would end the whole sweep.
    """
    try:
        cfg = spec.trial_for(trial_params(config), check_paths)
    except ValidationError as err:
        raise ConfigError(describe(err)) from None
    repeat = int(config.get("__trial_index__", 0))
    return cfg.model_copy(update={"seed": cfg.seed + repeat}) if repeat else cfg


class RayHooks:
    """The training core's host inside a Ray Train worker.

    A diverged trial reports the sweep ``metric`` as NaN: Tune requires the metric in every
    result, ASHA's cut-offs skip NaN, and ``sweep.Search`` tells Optuna the worst value. Every
    report carries ``loop_s``, the seconds since the training loop began (the core loads its
    checkpoint last before it), for the sweep's compute accounting.
    """

    def __init__(self, metric: str) -> None:
        self.device = ray.train.torch.get_device()
        self.metric = metric
        self.loop_started = time.perf_counter()

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def load_checkpoint(self) -> dict[str, Any] | None:
        self.loop_started = time.perf_counter()
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return load_checkpoint(Path(directory))

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        metrics = {**metrics, "loop_s": time.perf_counter() - self.loop_started}
        if metrics.get("diverged"):
            metrics[self.metric] = math.nan
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(state, Path(directory))
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))


def worker_loop(config: dict[str, Any]) -> None:
    """``train_loop_per_worker``: the process group is already up (gloo on CPU, nccl on GPU)."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)  # one line per report otherwise
    cfg = trial_config(config["trial"])  # ConfigError, which pickles (pydantic's errors do not)
    if cfg.threads is None:
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    train(cfg, RayHooks(config["metric"]))


class ForwardToTune(UserCallback):
    """Puts rank 0's reports in the trial attempt's ``Mailbox`` slot, which the trial driver blocks on."""

    def __init__(self, box: ActorHandle, key: str) -> None:
        self.box, self.key = box, key

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Checkpoint | None) -> None:
        result = dict(metrics[0])
        if checkpoint is not None:
            result["checkpoint_path"] = checkpoint.path
        ray.get(self.box.put.remote(self.key, result))


class Trainer(TorchTrainer):
    """``TorchTrainer`` without two helpers that each start one more Ray process per trial (on 2
    cores, every process start delays the workers' own): Train's Ray Data callback, which starts a
    ``DatasetManager`` actor even when no Ray dataset is given (the product passes none; each worker
    loads its images itself), and its placement-group cleaner, whose work the sweep's ``Mailbox``
    does (``tests/test_faults.py`` checks that no placement group outlives its trial)."""

    def _create_default_callbacks(self) -> list[Any]:
        dropped = (DatasetsCallback, PlacementGroupCleanerCallback)
        return [c for c in super()._create_default_callbacks() if not isinstance(c, dropped)]


def run_trial(config: dict[str, Any], spec: SweepSpec, storage: str) -> None:
    """The Tune function trainable (trial driver); Train runs go under ``storage`` (``Locations.train_path``),
    reports come through the sweep's ``Mailbox``, which ``EndTrials`` tells when the trial ended.

    Tune reuses a trial driver for the next trial (``reuse_actors``: no new process importing torch
    per trial). A trial Tune stopped therefore ends here in one of two ways, both within Tune's
    reset timeout: in ``tune.report``, which raises ``SystemExit`` when Tune resets the driver;
    or waiting for a report, when the mailbox ended its Train run and woke it: then it returns.
    """
    # The reset waits this long for the previous trial's thread (Tune's default 2 s, on 2 busy cores).
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] = "0"  # else rank 0's prints appear twice
    os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    # Train's Prometheus gauges: nothing collects them (``run.init_ray``), yet each worker computes them.
    os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
    # Worker start-up takes far longer than Train's 60 s default on a busy 2-core machine.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "300")
    cfg = config_for(spec, config)
    res = spec.resources
    trial_id = tune.get_context().get_trial_id()
    box = ray.get_actor(MAILBOX)
    key = f"{trial_id}/{uuid.uuid4().hex}"  # this attempt's slot: never an earlier attempt's report
    per_worker = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}
    trainer = Trainer(
        worker_loop,
        train_loop_config={
            "trial": cfg.model_dump(mode="json"), "cpus_per_worker": res.cpus_per_worker, "metric": spec.metric
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=res.gpus_per_worker > 0, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=storage,
            callbacks=[ForwardToTune(box, key), HoldRun(box, trial_id)],
            checkpoint_config=CheckpointConfig(num_to_keep=spec.failures.checkpoints_to_keep),
            failure_config=ray.train.FailureConfig(
                max_failures=spec.failures.max_failures, controller_failure_limit=spec.failures.max_failures
            ),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    outcome: list[Any] = []

    def fit() -> None:
        try:
            outcome.append(trainer.fit())
        except BaseException as err:  # noqa: BLE001 - re-raised in the trial driver's thread
            outcome.append(err)
        finally:
            box.put.remote(key, None)

    fitting = threading.Thread(target=fit, name="trainer.fit", daemon=True)
    fitting.start()
    try:
        while (result := ray.get(box.get.remote(key))) is not None:
            tune.report(result)
    finally:  # also on SystemExit: the Train run ends with the trial
        stopped = ray.get(box.end.remote(trial_id))  # True when Tune had already ended the trial
    fitting.join()
    if stopped:
        return
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    delete_untracked_checkpoints(outcome[0])


def delete_untracked_checkpoints(result: ray.train.Result) -> None:
    """Delete the checkpoint folders Train does not track, so that a trial keeps at most
    ``failures.checkpoints_to_keep``: a worker lost during a report leaves the checkpoint rank 0 had
    already uploaded, which Train never registered and so never deletes."""
    tracked = {checkpoint.path for checkpoint, _ in result.best_checkpoints or []}
    fs = result.filesystem
    for info in fs.get_file_info(pafs.FileSelector(result.path)):
        folder = info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_")
        if folder and info.path not in tracked:
            fs.delete_dir(info.path)
