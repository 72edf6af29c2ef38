"""Row 8: the ViT-nano training step under each precision, on the device the benchmark runs on.

The step is the trial's (``Trainer.train_step`` in one process, without DDP and the lr schedule):
views → backbone, projector, objective and online probe under the precision's autocast →
backward and AdamW through ``Precision.backward_step`` (fp16: the gradient scaler). The
precisions take turns, one step each per round, so all see the same background load; the value
is bf16's images/s ÷ fp32's. On CUDA, fp32 runs its matmuls in TF32 (as trials do there) and the
target is a speed-up; on a CPU without bf16 matmul units bf16 is expected to be several times
slower (DESIGN.md §6), which is why trials default to fp32 there: the row is then reported only.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import Row, median, now
from benchmarks.step import nano_config, random_images
from jepa_sweeps.config import TrialConfig
from jepa_sweeps.data.datasets import ImageDataset
from jepa_sweeps.models.lejepa import build_model
from jepa_sweeps.precision import Precision
from jepa_sweeps.train import build_views, make_optimizer

PRECISIONS = ("fp32", "bf16", "fp16")
CUDA_TARGET = 1.5  # bf16 ÷ fp32 images/s; the issue expects 2–3× on A100/H100-class GPUs


class Stepper:
    """One model, optimizer and precision; ``step`` times one training step (synchronised on CUDA)."""

    def __init__(self, cfg: TrialConfig, data: ImageDataset, precision: str, device: torch.device) -> None:
        n = cfg.optim.batch_size
        self.device = device
        self.model = build_model(cfg, data).to(device)
        self.views = build_views(cfg, data)
        self.optimizer = make_optimizer(cfg, self.model)
        self.precision = Precision(precision, device)
        self.images = data.train_images[:n].to(device)
        self.labels = data.train_labels[:n].to(device)
        self.idx = torch.arange(n, device=device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, i: int) -> float:
        self._sync()
        started = now()
        globals_, locals_ = self.views(self.images, self.idx, i)
        groups = [globals_] if locals_ is None else [globals_, locals_]
        with self.precision.autocast():
            out = self.model(groups, self.labels, i)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward_step(out["total"], self.optimizer)
        self._sync()
        return now() - started


def precision_row(batch: int, reps: int, cuda_batch: int | None = None, warmup: int = 1, threads: int = 2,
                  device: str | None = None, nano_overrides: dict[str, Any] | None = None) -> Row:
    """Row 8: images/s of the ViT-nano step under fp32, bf16 and fp16 on ``device`` (default: CUDA
    if present, else the CPU with ``threads`` threads); ``cuda_batch`` replaces ``batch`` on CUDA."""
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if target.type == "cuda" and cuda_batch:
        batch = cuda_batch
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg = nano_config(batch, nano_overrides)
        data = random_images(batch)
        steppers = {p: Stepper(cfg, data, p, target) for p in PRECISIONS}
        seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for i in range(warmup + reps):
            for p, stepper in steppers.items():
                t = stepper.step(i)
                if i >= warmup:
                    seconds[p].append(t)
    finally:
        torch.set_num_threads(previous)
    ips = {p: batch / median(s) for p, s in seconds.items()}
    ratio = ips["bf16"] / ips["fp32"]
    cuda = target.type == "cuda"
    details = {
        "device": torch.cuda.get_device_name(target) if cuda else f"cpu, {threads} threads",
        "batch": batch, "reps": reps, "encoder": cfg.encoder.model_dump(),
        "views": f"{cfg.views.n_global}×{cfg.global_size}px + {cfg.views.n_local}×{cfg.local_size}px",
        "images_per_s": {p: round(v, 1) for p, v in ips.items()},
        "step_s": {p: [round(t, 4) for t in s] for p, s in seconds.items()},
        "tf32": cuda,
    }
    return Row(
        "8", f"ViT-nano step images/s, bf16 ÷ fp32 ({target.type})", f"{ratio:.2f}×",
        f"≥ {CUDA_TARGET}× on CUDA", ratio >= CUDA_TARGET if cuda else None, ratio, details,
        ["images/s per device: " + ", ".join(f"{p} {v:.1f}" for p, v in ips.items())
         + f" (batch {batch}, {details['device']})"],
    )
