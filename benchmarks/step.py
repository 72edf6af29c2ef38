"""Rows 2b, 3 and 4: one process's training step, timed phase by phase.

The step is ``Trainer.train_step``'s computation (views → backbone + projector → objective →
backward → AdamW) without DDP and without the tiny online probe, cut at the projector output:
the objective runs on a detached copy of the projections, its gradient is then pushed through
the encoder with ``z.backward(grad)``. The FLOPs and gradients are those of the uncut step, and
the cut gives the objective's own forward+backward time and the encoder's forward+backward time
from the same repetitions. Every other regulariser is then timed on the same projections.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import Row, median, now, timed
from jepa_sweeps.config import TrialConfig
from jepa_sweeps.data.datasets import ImageDataset, load_dataset
from jepa_sweeps.models.lejepa import LeJEPA, build_model
from jepa_sweeps.objectives import build
from jepa_sweeps.spec import load_spec
from jepa_sweeps.train import build_views, make_optimizer

PHASES = ("views", "encoder_fwd", "objective", "encoder_bwd", "optimizer")
OBJECTIVES = ("sigreg", "vicreg", "infonce", "ema")
LAMBDA_SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "lambda.yaml"


def random_images(n: int, size: int = 32, channels: int = 3, num_classes: int = 100, seed: int = 0) -> ImageDataset:
    """CIFAR-sized random uint8 images: view and model costs do not depend on the pixels."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % num_classes
    return ImageDataset("cifar100", images, labels, images[: num_classes].clone(), labels[:num_classes].clone(), num_classes)


def nano_config(batch: int, overrides: dict[str, Any] | None = None) -> TrialConfig:
    """The ViT-nano preset on CIFAR-sized images: 2 global 32px + 6 local 16px views, SIGReg.
    No data folder is read (``random_images`` stands in for the files), so its check is off.
    ``overrides`` (dim, depth, heads) shrink the model for smoke tests."""
    return TrialConfig.model_validate({
        "data": {"name": "cifar100", "path": tempfile.gettempdir()},
        "encoder": {"name": "vit", "preset": "nano", **(overrides or {})},
        "optim": {"batch_size": batch},
    }, context={"check_paths": False})


def digits_config() -> TrialConfig:
    """The main job's trial (search_spaces/lambda.yaml at λ = 0.05) as one process on its global batch."""
    spec = load_spec(LAMBDA_SPEC, ["points=[]", "num_samples=1", "search.objective.lam=0.05"])
    return spec.trial_for({}).model_copy(update={"workers": 1})


@dataclass
class Steps:
    """Per-repetition phase times of the step, its FLOPs, and what the objective timings reuse."""

    model: LeJEPA
    cfg: TrialConfig
    phases: dict[str, list[float]]
    flops: int
    z: torch.Tensor  # projections (V, N, K) of the last step, detached
    globals_: torch.Tensor  # its global views, for objectives with a teacher
    probes: list[float] = field(default_factory=list)  # what ``between`` returned after each repetition

    def totals(self, names: tuple[str, ...] = PHASES) -> list[float]:
        return [sum(self.phases[p][i] for p in names) for i in range(len(self.phases["views"]))]

    def encoder(self) -> float:
        """Median encoder forward+backward seconds: the denominator of the regulariser overheads."""
        return median(self.totals(("encoder_fwd", "encoder_bwd")))


def measure_steps(cfg: TrialConfig, data: ImageDataset, reps: int, warmup: int = 1,
                  between: Callable[[], float] | None = None) -> Steps:
    """Time ``reps`` steps after ``warmup``; FLOPs are counted on the first warm-up step (the
    counter slows it). ``between`` runs after each timed step (interleaving a reference
    measurement so that both see the same background load)."""
    if warmup < 1:
        raise ValueError("need a warm-up step to count FLOPs on")
    model = build_model(cfg, data)
    views = build_views(cfg, data)
    optimizer = make_optimizer(cfg, model)
    n = cfg.optim.batch_size
    images, idx = data.train_images[:n], torch.arange(n)
    phases: dict[str, list[float]] = {p: [] for p in PHASES}
    probes: list[float] = []
    counter = FlopCounterMode(display=False)
    for i in range(warmup + reps):
        t = [now()]
        globals_, locals_ = views(images, idx, i)
        groups = [globals_] if locals_ is None else [globals_, locals_]
        t.append(now())
        with counter if i == 0 else nullcontext():
            _, z = model.embed_views(groups)
            t.append(now())
            z_cut = z.detach().requires_grad_(True)
            model.objective(z_cut, n_global=globals_.shape[0], step=i)["loss"].backward()
            t.append(now())
            z.backward(z_cut.grad)
            t.append(now())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t.append(now())
        if i >= warmup:
            for p, start, end in zip(PHASES, t, t[1:]):
                phases[p].append(end - start)
            if between is not None:
                probes.append(between())
    return Steps(model, cfg, phases, counter.get_total_flops(), z.detach(), globals_, probes)


def objective_seconds(steps: Steps, reps: int, teacher_reps: int) -> dict[str, dict[str, float]]:
    """Median seconds of each objective's forward+backward on the step's projections (the
    invariance term included: conservative); for objectives with a teacher also its forward on the
    global views (``targets``) and its update after the step, which only they cost."""
    v, n, k = steps.z.shape
    n_global = steps.globals_.shape[0]
    out: dict[str, dict[str, float]] = {}
    for name in OBJECTIVES:
        objective = build(name, embed_dim=k, **(steps.cfg.objective_params if name == steps.cfg.objective.name else {}))
        objective.setup(steps.model.backbone, steps.model.projector)
        parts: dict[str, float] = {}
        target = objective.targets(steps.globals_)
        if target is not None:
            parts["teacher_fwd"] = median(timed(lambda: objective.targets(steps.globals_), teacher_reps))
            parts["ema_update"] = median(timed(lambda: objective.after_step(0, 1), reps))
        counter = iter(range(1 << 30))

        def forward_backward() -> None:
            z = steps.z.clone().requires_grad_(True)
            objective(z, n_global=n_global, step=next(counter), target=target)["loss"].backward()

        parts["loss_fwd_bwd"] = median(timed(forward_backward, reps, warmup=2))
        parts["total"] = sum(parts.values())
        out[name] = parts
    return out


def matmul_flops(n: int, reps: int = 1) -> float:
    """fp32 FLOP/s of an n×n matmul with the current thread count: the machine's roof."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median(timed(lambda: a @ b, reps, warmup=1))


def step_rows(nano_batch: int, nano_reps: int, cnn_reps: int, objective_reps: int, matmul_n: int,
              threads: int = 2, nano_overrides: dict[str, Any] | None = None) -> list[Row]:
    """Rows 2b (views' share), 3 (regulariser overheads) and 4 (compute efficiency)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cfg = nano_config(nano_batch, nano_overrides)
        nano = measure_steps(cfg, random_images(nano_batch), nano_reps, between=lambda: matmul_flops(matmul_n))
        nano_obj = objective_seconds(nano, objective_reps, teacher_reps=nano_reps)
        cnn_cfg = digits_config()
        cnn = measure_steps(cnn_cfg, load_dataset("digits"), cnn_reps)
        cnn_obj = objective_seconds(cnn, objective_reps, teacher_reps=cnn_reps)
    finally:
        torch.set_num_threads(previous)
    return [views_share_row(nano), regulariser_row(nano, nano_obj, cnn, cnn_obj), efficiency_row(nano, matmul_n, threads)]


def _setup(steps: Steps) -> dict[str, Any]:
    cfg = steps.cfg
    return {
        "encoder": cfg.encoder.model_dump(), "batch": cfg.optim.batch_size,
        "views": f"{cfg.views.n_global}×{cfg.global_size}px + {cfg.views.n_local}×{cfg.local_size}px",
        "reps": len(steps.phases["views"]), "threads": torch.get_num_threads(),
        "phase_median_s": {p: round(median(t), 4) for p, t in steps.phases.items()},
    }


def views_share_row(nano: Steps) -> Row:
    shares = [v / t for v, t in zip(nano.phases["views"], nano.totals())]
    share = median(shares)
    return Row(
        "2b", "views' share of a ViT-nano step", f"{100 * share:.2f} %", "≤ 15 %", share <= 0.15, share,
        {**_setup(nano), "step_s": round(median(nano.totals()), 3)},
    )


def regulariser_row(nano: Steps, nano_obj: dict, cnn: Steps, cnn_obj: dict) -> Row:
    table = {}
    for label, steps, costs in (("vit_nano", nano, nano_obj), ("digits_cnn", cnn, cnn_obj)):
        encoder = steps.encoder()
        table[label] = {
            "encoder_fwd_bwd_s": round(encoder, 4),
            "overhead": {name: round(c["total"] / encoder, 5) for name, c in costs.items()},
            "seconds": {name: {k: round(v, 5) for k, v in c.items()} for name, c in costs.items()},
            **_setup(steps),
        }
    sigreg = table["vit_nano"]["overhead"]["sigreg"]
    notes = [
        f"{label:<11} " + "  ".join(f"{name} {100 * x:.2f}%" for name, x in t["overhead"].items())
        + f"   (encoder fwd+bwd {t['encoder_fwd_bwd_s']:.3f} s, batch {t['batch']})"
        for label, t in table.items()
    ]
    return Row("3", "SIGReg overhead ÷ encoder fwd+bwd, ViT-nano", f"{100 * sigreg:.2f} %", "≤ 3 %",
               sigreg <= 0.03, sigreg, table, notes)


def efficiency_row(nano: Steps, matmul_n: int, threads: int) -> Row:
    """FLOPs of forward+backward (FlopCounterMode: matmuls, convolutions, attention) over the
    whole step's time (views and AdamW included), against a matmul timed right after each step."""
    ratios = [nano.flops / t / roof for t, roof in zip(nano.totals(), nano.probes)]
    fwd_bwd = [nano.flops / t / roof for t, roof in
               zip(nano.totals(("encoder_fwd", "objective", "encoder_bwd")), nano.probes)]
    ratio = median(ratios)
    details = {
        "step_flops": nano.flops, "achieved_gflops": round(nano.flops / median(nano.totals()) / 1e9, 1),
        "matmul_gflops": round(median(nano.probes) / 1e9, 1), "matmul_n": matmul_n, "threads": threads,
        "fwd_bwd_only_ratio": round(median(fwd_bwd), 3), **_setup(nano),
    }
    return Row("4", "ViT-nano step FLOP/s ÷ fp32 matmul FLOP/s", f"{ratio:.2f}", "≥ 0.4", ratio >= 0.4, ratio, details,
               [f"step {details['achieved_gflops']} GFLOP/s, matmul {details['matmul_gflops']} GFLOP/s "
                f"(fwd+bwd only: {details['fwd_bwd_only_ratio']:.2f})"])
