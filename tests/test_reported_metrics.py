"""The metric names a sweep may optimise (``metrics.reported_metrics``, used by spec validation) are
exactly the keys every epoch's report of a real trial holds: the two cannot drift apart."""

from __future__ import annotations

from typing import Any

import pytest

from jepa_sweeps.config import TrialConfig
from jepa_sweeps.metrics import FINAL_METRICS, reported_metrics
from jepa_sweeps.train import LocalHooks, train

TINY = {
    "epochs": 2,
    "optim": {"batch_size": 64, "warmup_epochs": 0},
    "views": {"n_global": 2, "n_local": 1},
    "projector": {"hidden_dim": 16, "out_dim": 8},
    "eval": {"final_probe_epochs": 2, "val_batches": 1},
}
VIT = {"name": "vit", "preset": "tiny", "dim": 32, "depth": 2, "heads": 2}


@pytest.mark.slow  # ≈ 1 min per case on a busy 2-core machine
@pytest.mark.parametrize(("objective", "encoder", "extra"), [
    ({"name": "sigreg", "num_slices": 8}, {"name": "cnn", "width": 4}, {}),
    ({"name": "vicreg"}, {"name": "cnn", "width": 4}, {}),
    ({"name": "infonce"}, {"name": "cnn", "width": 4}, {}),
    ({"name": "ema"}, {"name": "cnn", "width": 4}, {}),
    ({"name": "sigreg", "num_slices": 8}, VIT, {}),
    ({"name": "sigreg", "num_slices": 8}, {**VIT, "heads": 1, "dim": 8}, {"eval": {**TINY["eval"], "extrapolate": False}}),
])
def test_reported_metrics_are_what_every_epoch_reports(objective: dict, encoder: dict, extra: dict[str, Any]) -> None:
    cfg = TrialConfig.model_validate({**TINY, "objective": objective, "encoder": encoder, **extra})
    hooks = LocalHooks()
    train(cfg, hooks)
    every = set.intersection(*(set(r) for r in hooks.reports)) - {"diverged_reason"}
    assert reported_metrics(cfg) == every - set(FINAL_METRICS)
    assert set(FINAL_METRICS) <= set(hooks.reports[-1]) and not set(FINAL_METRICS) & set(hooks.reports[0])
