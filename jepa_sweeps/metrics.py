"""What a trial reports: the metric names of every epoch's report, known from the trial config
before anything runs, so that spec validation can refuse a metric no trial would report."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from jepa_sweeps.config import TrialConfig, ViTConfig
from jepa_sweeps.data.imagefolder import is_flat_folder
from jepa_sweeps.evaluation.attention import STATISTICS
from jepa_sweeps.evaluation.selection import MODES
from jepa_sweeps.objectives import build

#: In every epoch's report beside the loss terms (``Trainer.run``, ``LeJEPA.forward``, ``evaluate``).
LOOP_METRICS = ("epoch", "step", "world_size", "images_per_s", "diverged", "lr", "z_std")
EVAL_METRICS = ("val_inv_loss", "val_reg_loss", "val_loss", *MODES)  # MODES: the label-free scores
LABELLED_METRICS = ("knn_acc", "linear_acc", "probe_loss")  # absent for data without labels
FINAL_METRICS = ("final_linear_acc",)  # the last epoch only


def reported_metrics(cfg: TrialConfig) -> frozenset[str]:
    """The metric names every epoch's report of ``cfg``'s trial holds (what a sweep may optimise).

    The loss terms and schedule values are whatever the objective returns: asked of the objective
    itself, on a tiny batch. ``tests/test_reported_metrics.py`` checks the whole set against real runs.
    """
    names = {*LOOP_METRICS, *EVAL_METRICS, *_objective_terms(cfg.objective.name, tuple(cfg.objective_params.items()))}
    labelled = cfg.data.labels != "none" and not (cfg.data.name == "imagefolder" and is_flat_folder(cfg.data.path))
    if labelled:
        names |= set(LABELLED_METRICS)
    if isinstance(cfg.encoder, ViTConfig):
        from jepa_sweeps.models.vit import PRESETS

        preset = PRESETS[cfg.encoder.preset]
        depth, heads = cfg.encoder.depth or preset["depth"], cfg.encoder.heads or preset["heads"]
        stats = [s for s in STATISTICS if heads > 1 or not s.startswith("head_")]
        suffixes = ["", "_2x"] if cfg.eval.extrapolate else [""]
        names |= {f"attn_{s}{layer}{x}" for s in stats for x in suffixes for layer in ["", *(f"_l{i}" for i in range(depth))]}
        if cfg.eval.extrapolate and labelled:
            names.add("knn_acc_2x")
    return frozenset(names)


@functools.lru_cache(maxsize=64)
def _objective_terms(name: str, params: tuple[tuple[str, Any], ...]) -> frozenset[str]:
    """The scalar terms of the objective's forward and the schedule values of its ``after_step``."""
    objective = build(name, embed_dim=4, **dict(params))
    objective.setup(nn.Linear(4, 4), nn.Linear(4, 4))
    z = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = objective(z, n_global=2, step=0, target=z[:2])
        schedule = objective.after_step(0, 1)
    return frozenset(k for k, v in out.items() if v.numel() == 1) | frozenset(schedule)
