"""The trial loop: one function that trains one ``TrialConfig`` on one worker.

It runs unchanged in a plain process (tests, debugging: ``LocalHooks``) and on every Ray Train
worker (``jepa_sweeps.trial`` supplies hooks that report to Ray). Nothing here imports Ray or
MLflow. Under DDP the loop trains exactly as one process on the global batch: every worker takes
its slice of the same global batch, views depend only on (seed, epoch, image index), and every
cross-sample statistic (norm layers, regularisers) is computed on the global batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from jepa_sweeps.config import TrialConfig
from jepa_sweeps.data.datasets import ImageDataset, load_dataset
from jepa_sweeps.data.views import Augment, CropGroup, MultiCrop, resize_normalise
from jepa_sweeps.distributed import all_reduce_detached, is_distributed, rank, world_size
from jepa_sweeps.evaluation.attention import attention_maps, attention_metrics
from jepa_sweeps.evaluation.diagnostics import diagnostic_pngs
from jepa_sweeps.evaluation.probes import embed, knn_accuracy, linear_probe_accuracy, rankme
from jepa_sweeps.evaluation.selection import selection_scores
from jepa_sweeps.models import supports_attention
from jepa_sweeps.models.lejepa import LeJEPA, build_model
from jepa_sweeps.precision import Precision, compile_module

STATE_FILE = "state.pt"
ENCODER_FILE = "encoder.pt"
ARTIFACTS_DIR = "artifacts"  # per-eval files (plots) in a checkpoint, for the host to upload
VAL_EPOCH_KEY = 1 << 30  # the fixed "epoch" of held-out views, so val curves compare across epochs


class Hooks(Protocol):
    """What the loop needs from its host (a plain process or a Ray Train worker)."""

    device: torch.device

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def load_checkpoint(self) -> dict[str, Any] | None: ...

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None: ...


def save_checkpoint(state: dict[str, Any], directory: Path) -> None:
    """The full training state plus the backbone alone (what users want as an artifact), and the
    files written since the last checkpoint (``state["artifacts"]``: name → bytes) under
    ``artifacts/``: the checkpoint is the one channel from workers to the sweep driver."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in state.items() if k != "artifacts"}, directory / STATE_FILE)
    torch.save(state["model"]["backbone"], directory / ENCODER_FILE)
    for name, data in state.get("artifacts", {}).items():
        target = directory / ARTIFACTS_DIR / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def load_checkpoint(directory: Path) -> dict[str, Any]:
    return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)


@dataclass
class LocalHooks:
    """Host for a plain process: keeps the last checkpoint in ``directory`` and the reports."""

    directory: Path | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reports: list[dict[str, Any]] = field(default_factory=list)
    stop_after_epoch: int | None = None  # simulate an interruption (tests)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        if is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    def load_checkpoint(self) -> dict[str, Any] | None:
        if self.directory is None or not (self.directory / STATE_FILE).exists():
            return None
        return load_checkpoint(self.directory)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        self.reports.append(metrics)
        if state is not None and self.directory is not None and rank() == 0:
            save_checkpoint(state, self.directory)
        if self.stop_after_epoch is not None and metrics["epoch"] >= self.stop_after_epoch:
            raise Interrupted(int(metrics["epoch"]))


class Interrupted(Exception):
    """Raised by ``LocalHooks`` to emulate a trial killed after an epoch."""


def build_views(cfg: TrialConfig, data: ImageDataset) -> MultiCrop:
    v = cfg.views
    augment = Augment(
        ratio=v.ratio, flip_p=v.flip_p, jitter_p=v.jitter_p, brightness=v.brightness, contrast=v.contrast,
        saturation=v.saturation, hue=v.hue, grayscale_p=v.grayscale_p, blur_p=v.blur_p,
        blur_sigma=v.blur_sigma, solarize_p=v.solarize_p,
    )
    return MultiCrop(
        CropGroup(v.n_global, cfg.global_size, v.global_scale),
        CropGroup(v.n_local, cfg.local_size, v.local_scale),
        augment, data.mean, data.std, cfg.seed,
    )


def learning_rate(cfg: TrialConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warmup to the batch-scaled peak, then cosine to ``min_lr_ratio`` of it."""
    peak = cfg.optim.scaled_lr()
    warmup = int(cfg.optim.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total_steps - warmup, 1)
    floor = peak * cfg.optim.min_lr_ratio
    return floor + (peak - floor) * (1 + math.cos(math.pi * min(progress, 1.0))) / 2


def make_optimizer(cfg: TrialConfig, model: LeJEPA) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norm parameters; the probe at its own fixed lr."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith("probe."):
            (decay if p.ndim > 1 else no_decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.optim.weight_decay, "kind": "model"},
            {"params": no_decay, "weight_decay": 0.0, "kind": "model"},
            {"params": list(model.probe.parameters()) if model.probe is not None else [], "weight_decay": 0.0,
             "lr": cfg.optim.probe_lr, "kind": "probe"},
        ],
        lr=cfg.optim.scaled_lr(),
    )


def global_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The epoch's global batches (drop_last), identical on every rank."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def local_slice(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (rank order = concatenation order)."""
    per = batch.shape[0] // world_size()
    return batch[rank() * per : (rank() + 1) * per]


class Trainer:
    """State and steps of one trial; ``run`` is the loop."""

    def __init__(self, cfg: TrialConfig, hooks: Hooks):
        self.cfg, self.hooks = cfg, hooks
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = hooks.device
        self.data = load_dataset(cfg.data.name, cfg.data.path, cfg.data.image_size, cfg.data.labels != "none")
        self.train_x = self.data.train_images.to(device)
        self.train_y = self.data.train_labels.to(device)
        self.test_x = self.data.test_images.to(device)
        self.test_y = self.data.test_labels.to(device)
        self.views = build_views(cfg, self.data)
        self.model = build_model(cfg, self.data)
        self.precision = Precision(cfg.optim.precision, device)
        if cfg.compile:
            compile_module(self.model.backbone)
        self.ddp_model = hooks.prepare_model(self.model)
        self.model.to(device)
        self.optimizer = make_optimizer(cfg, self.model)
        self.steps_per_epoch = self.train_x.shape[0] // cfg.optim.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"optim.batch_size={cfg.optim.batch_size} exceeds the {self.train_x.shape[0]} training images"
            )
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.epoch, self.step = 0, 0
        self.metrics: dict[str, float] = {}
        self.schedule: dict[str, float] = {}  # lr and the objective's schedule values of the last step
        self.files: dict[str, bytes] = {}  # plots not yet handed over with a checkpoint
        state = hooks.load_checkpoint()
        if state is not None:
            self.load_state(state)

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": {
                "backbone": self.model.backbone.state_dict(),
                "rest": {k: v for k, v in self.model.state_dict().items() if not k.startswith("backbone.")},
            },
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.precision.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "metrics": dict(self.metrics),
            "artifacts": dict(self.files),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.backbone.load_state_dict(state["model"]["backbone"])
        loaded = self.model.load_state_dict(state["model"]["rest"], strict=False)  # the backbone is apart
        missing = [k for k in loaded.missing_keys if not k.startswith("backbone.")]
        if missing or loaded.unexpected_keys:  # e.g. written before the objective kept this state
            raise ValueError(
                f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {loaded.unexpected_keys[:3]}"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state.get("scaler"))
        self.epoch, self.step, self.metrics = state["epoch"], state["step"], dict(state["metrics"])

    # -- steps ---------------------------------------------------------------------------------
    def train_step(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = local_slice(batch).to(self.train_x.device)
        globals_, locals_ = self.views(self.train_x[idx], idx, self.epoch)
        groups = [globals_] if locals_ is None else [globals_, locals_]
        lr = learning_rate(self.cfg, self.step, self.total_steps, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            if group["kind"] == "model":
                group["lr"] = lr
        with self.precision.autocast():
            out = self.ddp_model(groups, self.train_y[idx], self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward_step(out["total"], self.optimizer)
        self.schedule.update(self.model.objective.after_step(self.step, self.total_steps))
        self.schedule["lr"] = lr
        self.step += 1
        return out

    @torch.no_grad()
    def validation_losses(self) -> dict[str, float]:
        """Loss terms on held-out images with fixed views, so the curve is comparable per epoch."""
        n = self.test_x.shape[0]
        b = min(self.cfg.optim.batch_size, n - n % world_size())
        self.model.eval()
        sums: dict[str, float] = {}
        batches = [torch.arange(i, i + b) for i in range(0, n - b + 1, b)][: self.cfg.eval.val_batches]
        for batch in batches:
            idx = local_slice(batch).to(self.test_x.device)
            globals_, locals_ = self.views(self.test_x[idx], idx, VAL_EPOCH_KEY)
            groups = [globals_] if locals_ is None else [globals_, locals_]
            _, _, out = self.model.losses(groups, step=0)
            vals = all_reduce_detached(torch.stack([out["inv_loss"], out["reg_loss"], out["loss"]]))
            for key, value in zip(("val_inv_loss", "val_reg_loss", "val_loss"), vals):
                sums[key] = sums.get(key, 0.0) + float(value) / len(batches)
        self.model.train()
        return sums

    @torch.no_grad()
    def evaluate(self, final: bool) -> dict[str, float]:
        size, mean, std = self.cfg.global_size, self.data.mean, self.data.std

        def prepare(x: torch.Tensor) -> torch.Tensor:
            return resize_normalise(x, size, mean, std)

        train_f = embed(self.model.backbone, self.train_x, prepare)
        test_f = embed(self.model.backbone, self.test_x, prepare)
        labelled = self.data.labelled
        metrics = {"rankme": rankme(test_f), **self.validation_losses()}
        lam = getattr(self.cfg.objective, "lam", None)  # λ-form objectives only
        metrics.update(selection_scores(metrics["val_loss"], lam, self.cfg.eval.selection_alpha, test_f))
        if labelled:
            self.model.probe.eval()
            probe_pred = self.model.probe(test_f).argmax(1)
            self.model.probe.train()
            metrics["knn_acc"] = knn_accuracy(
                train_f, self.train_y, test_f, self.test_y, self.cfg.eval.knn_k, self.cfg.eval.knn_temperature
            )
            metrics["linear_acc"] = float((probe_pred == self.test_y).float().mean())
        if labelled and final and self.cfg.eval.final_probe_epochs:
            with torch.enable_grad():
                metrics["final_linear_acc"] = linear_probe_accuracy(
                    train_f, self.train_y, test_f, self.test_y, iterations=self.cfg.eval.final_probe_epochs
                )
        # ViTs: attention statistics on fixed eval images, also at twice the training resolution
        # (RoPE takes any grid) with kNN there. Pictures from rank 0, at the last eval by default.
        ev, backbone = self.cfg.eval, self.model.backbone
        fixed = self.test_x[: ev.attention_images]
        prepares = {"": prepare}
        if supports_attention(backbone):
            if ev.extrapolate and labelled:
                prepares["_2x"] = lambda x: resize_normalise(x, 2 * size, mean, std)
                train_2x, test_2x = (embed(backbone, x, prepares["_2x"]) for x in (self.train_x, self.test_x))
                metrics["knn_acc_2x"] = knn_accuracy(
                    train_2x, self.train_y, test_2x, self.test_y, ev.knn_k, ev.knn_temperature
                )
            for suffix, prep in prepares.items():
                maps = attention_maps(backbone, prep(fixed))
                metrics.update(attention_metrics(maps, ev.attention_threshold, suffix))
        if rank() == 0 and (final or (ev.plots_every and self.epoch % ev.plots_every == 0)):
            self.files.update(diagnostic_pngs(backbone, test_f, fixed, prepares, self.epoch))
        return metrics

    # -- loop ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        while self.epoch < cfg.epochs:
            started = time.perf_counter()
            sums: dict[str, torch.Tensor] = {}
            batches = global_batches(self.train_x.shape[0], cfg.optim.batch_size, cfg.seed, self.epoch)
            diverged = ""  # why, once a step's loss terms are not finite
            for batch in batches:
                out = self.train_step(batch)
                logged = {k: v.detach().float() for k, v in out.items() if k != "total" and v.numel() == 1}
                keys = sorted(logged)
                reduced = all_reduce_detached(torch.stack([logged[k] for k in keys]))
                finite = torch.isfinite(reduced)
                if not finite.all():
                    bad = ", ".join(k for k, ok in zip(keys, finite) if not ok)
                    diverged = f"non-finite {bad} at epoch {self.epoch + 1} step {self.step}"
                    break
                for k, v in zip(keys, reduced):
                    sums[k] = sums.get(k, 0.0) + v
            elapsed = time.perf_counter() - started
            self.epoch += 1
            if diverged:
                # The last evaluation describes weights that are gone: report the divergence alone.
                last = {"epoch": self.epoch, "step": self.step, "world_size": world_size(), "diverged": 1.0,
                        "diverged_reason": diverged}
                self.hooks.report(dict(last), None)
                return last
            final = self.epoch == cfg.epochs
            if self.epoch % cfg.eval.every == 0 or final or "rankme" not in self.metrics:
                self.metrics.update(self.evaluate(final))
            self.metrics.update(
                {k: float(v) / len(batches) for k, v in sums.items()},
                **self.schedule,
                epoch=self.epoch,
                step=self.step,
                world_size=world_size(),
                images_per_s=len(batches) * cfg.optim.batch_size / elapsed,
                diverged=0.0,
            )
            checkpoint = final or self.epoch % cfg.checkpoint_every == 0
            state = self.state() if checkpoint and rank() == 0 else None
            self.hooks.report(dict(self.metrics), state)
            if state is not None:
                self.files.clear()
        return dict(self.metrics)


def train(cfg: TrialConfig, hooks: Hooks | None = None) -> dict[str, Any]:
    """Train one trial to the end (or divergence) and return its last metrics."""
    return Trainer(cfg, hooks or LocalHooks()).run()
