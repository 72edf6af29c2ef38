"""Row 1's baseline: the trial's training loop as plain torch.distributed processes (no Ray, no
MLflow), one fresh interpreter per rank as torchrun would start them, so that neither start-up
nor memory carries anything of the benchmark driver.

Ray starts every worker process at nice 15 (its ``worker_niceness``), below its own daemons and
below anything else on the machine; the baseline runs at the same niceness, so that other load
on a shared machine weighs on both alike and the ratio shows what Ray itself costs.

``python -m benchmarks.plain CONFIG_JSON OUT_DIR RANK WORLD PORT THREADS NICENESS STOP_AFTER`` runs one
rank (``STOP_AFTER`` 0: every epoch).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from benchmarks.common import median
from jepa_sweeps.config import TrialConfig
from jepa_sweeps.train import LocalHooks, train

ROOT = Path(__file__).resolve().parents[1]
RAY_WORKER_NICENESS = 15


class Stopped(Exception):
    """Raised after the report a sweep's scheduler stopped the same trial at."""


@dataclass
class StampedHooks(LocalHooks):
    """``LocalHooks`` that note when training begins (the trainer loads its checkpoint last) and
    stop after ``stop_after`` reports, as ASHA stops a trial after a rung's report."""

    begun: float = 0.0
    stamps: list[float] = field(default_factory=list)
    stop_after: int = 0

    def load_checkpoint(self) -> dict[str, Any] | None:
        self.begun = time.time()
        return super().load_checkpoint()

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        self.stamps.append(time.time())
        super().report(metrics, state)
        if self.stop_after and len(self.stamps) >= self.stop_after:
            raise Stopped


@dataclass
class Run:
    """One trial's timeline (wall-clock seconds) and per-epoch throughput."""

    launched: float
    report_times: list[float]
    images_per_s: list[float]
    epoch_images: int  # images trained per epoch
    begun: float | None = None  # known exactly for plain runs only

    @property
    def steady(self) -> list[float]:
        return self.images_per_s[1:]

    def steady_windows(self) -> list[tuple[float, float]]:
        """(start, end) of each steady epoch's training: epoch i trains right after report i-1 is
        handed over, for its training time (the reports' arrival lags the worker by well under a
        second, against 3–5 s of training)."""
        return [(t, t + self.epoch_images / x) for t, x in zip(self.report_times, self.images_per_s[1:])]

    def estimated_begin(self) -> float:
        return first_epoch_start(self.report_times, [self.epoch_images / x for x in self.images_per_s])


def first_epoch_start(report_times: list[float], train_seconds: list[float]) -> float:
    """When epoch 1's training began: report 1's arrival minus epoch 1's training time minus the
    median end-of-epoch-to-report time of the later epochs (the last one, which adds the final
    probe, only when it is the only one)."""
    if len(report_times) < 2:
        raise ValueError("need at least 2 epochs to estimate the time between epochs")
    between = [t1 - t0 - s for t0, t1, s in zip(report_times, report_times[1:], train_seconds[1:])]
    return report_times[0] - train_seconds[0] - median(between[:-1] or between)


def epoch_images(cfg: TrialConfig) -> int:
    from jepa_sweeps.data.datasets import load_dataset

    n = load_dataset(cfg.data.name, cfg.data.path, cfg.data.image_size).train_images.shape[0]
    return n // cfg.optim.batch_size * cfg.optim.batch_size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def plain_run(cfg: TrialConfig, threads: int, workdir: Path, niceness: int = RAY_WORKER_NICENESS,
              stop_after: int = 0) -> Run:
    """Train ``cfg`` on ``cfg.workers`` gloo processes with ``threads`` torch threads each (and stop
    after ``stop_after`` epochs' reports, if given)."""
    out = workdir / f"plain-{time.time_ns()}"
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg.model_dump(mode="json")))
    port = free_port()
    env = {"OMP_NUM_THREADS": "1", **os.environ,  # what torchrun and Ray set for several ranks on a node
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    launched = time.time()
    procs = [
        subprocess.Popen([sys.executable, "-m", "benchmarks.plain", str(out / "config.json"), str(out), str(rank),
                          str(cfg.workers), str(port), str(threads), str(niceness), str(stop_after)], env=env)
        for rank in range(cfg.workers)
    ]
    if any(p.wait() for p in procs):
        raise RuntimeError(f"a plain torch.distributed rank failed (see the output above; files in {out})")
    record = json.loads((out / "rank0.json").read_text())
    return Run(launched, record["stamps"], [r["images_per_s"] for r in record["reports"]], epoch_images(cfg),
               begun=record["begun"])


def main(argv: list[str]) -> None:
    config, out, rank, world, port, threads, niceness, stop_after = argv
    os.nice(int(niceness) - os.nice(0))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(int(threads))  # what the trial's worker_loop sets
    dist.init_process_group("gloo", rank=int(rank), world_size=int(world))
    try:
        hooks = StampedHooks(directory=Path(out, "checkpoint"), stop_after=int(stop_after))
        try:
            train(TrialConfig.model_validate_json(Path(config).read_text()), hooks)
        except Stopped:
            pass
        if int(rank) == 0:
            record = {"begun": hooks.begun, "stamps": hooks.stamps, "reports": hooks.reports}
            Path(out, "rank0.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
