"""Attention statistics against hand-computed values, and the ViT path of ``Trainer.evaluate``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from jepa_sweeps.config import trial_config
from jepa_sweeps.evaluation.attention import attention_metrics, cls_patch_attention, layer_statistics
from jepa_sweeps.train import ARTIFACTS_DIR, LocalHooks, train

PATCHES = 16
TOKENS = PATCHES + 1  # token 0 is CLS


def _uniform(n: int = 2, heads: int = 4) -> torch.Tensor:
    return torch.full((n, heads, TOKENS, TOKENS), 1.0 / TOKENS)


def _one_hot(patches: list[int], cls_weight: float = 0.3) -> torch.Tensor:
    """One image; head h puts 1 - cls_weight on patch ``patches[h]`` and the rest on CLS."""
    attn = torch.zeros(1, len(patches), TOKENS, TOKENS)
    attn[:, :, :, 0] = 1.0  # non-CLS rows: irrelevant, but a valid distribution
    for h, p in enumerate(patches):
        attn[0, h, 0, 0] = cls_weight
        attn[0, h, 0, 1 + p] = 1.0 - cls_weight
    return attn


def test_cls_row_is_renormalised_over_patches() -> None:
    p = cls_patch_attention(_one_hot([3], cls_weight=0.6))
    assert p.shape == (1, 1, PATCHES)
    assert torch.allclose(p.sum(-1), torch.ones(1, 1, dtype=p.dtype))
    assert p[0, 0, 3] == 1.0


def test_uniform_attention() -> None:
    stats = layer_statistics(_uniform())
    assert stats["entropy"] == pytest.approx(math.log(PATCHES), abs=1e-12)
    assert stats["max"] == pytest.approx(1 / PATCHES)
    assert stats["sparsity"] == 0.0  # 1/16 is above the 0.01 threshold
    assert stats["head_similarity"] == pytest.approx(1.0)


def test_uniform_over_many_patches_counts_as_sparse() -> None:
    """As in the reproduction's 2× extrapolation: 1/256 per patch is all below 0.01."""
    n = 256
    stats = layer_statistics(torch.full((1, 2, n + 1, n + 1), 1.0 / (n + 1)))
    assert stats["entropy"] == pytest.approx(math.log(n))
    assert stats["sparsity"] == 1.0


def test_one_hot_attention() -> None:
    stats = layer_statistics(_one_hot([5]))
    assert stats["entropy"] == pytest.approx(0.0, abs=1e-12)
    assert stats["sparsity"] == pytest.approx((PATCHES - 1) / PATCHES)
    assert stats["max"] == pytest.approx(1.0)
    assert "head_similarity" not in stats  # one head: no pairs


def test_identical_heads_have_similarity_one() -> None:
    torch.manual_seed(0)
    one = torch.rand(3, 1, TOKENS, TOKENS).softmax(-1)
    stats = layer_statistics(one.expand(3, 5, TOKENS, TOKENS))
    assert stats["head_similarity"] == pytest.approx(1.0)
    assert stats["head_diversity"] == pytest.approx(0.0, abs=1e-12)


def test_heads_on_different_patches_are_dissimilar() -> None:
    stats = layer_statistics(_one_hot([0, 1, 2, 3]))
    assert stats["head_similarity"] == pytest.approx(0.0)
    assert stats["head_diversity"] == pytest.approx(1.0)
    # two heads on one patch, two on another: 2 of the 6 pairs agree
    assert layer_statistics(_one_hot([0, 0, 1, 1]))["head_similarity"] == pytest.approx(2 / 6)


def test_threshold_is_a_parameter() -> None:
    assert layer_statistics(_uniform(), threshold=0.1)["sparsity"] == 1.0


def test_metric_names_per_layer_and_averaged() -> None:
    maps = [_uniform(), _one_hot([1, 1, 1, 1]).expand(2, 4, TOKENS, TOKENS)]
    metrics = attention_metrics(maps, suffix="_2x")
    assert metrics["attn_entropy_l0_2x"] == pytest.approx(math.log(PATCHES))
    assert metrics["attn_entropy_l1_2x"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["attn_entropy_2x"] == pytest.approx(math.log(PATCHES) / 2)
    assert metrics["attn_head_diversity_2x"] == pytest.approx(0.0, abs=1e-12)
    assert set(metrics) == {
        f"attn_{s}{layer}_2x"
        for s in ("entropy", "sparsity", "max", "head_similarity", "head_diversity")
        for layer in ("", "_l0", "_l1")
    }


@pytest.mark.slow  # a ViT trial: ~20 s here
def test_vit_trial_reports_attention_metrics_and_writes_pictures(tmp_path: Path) -> None:
    """A tiny plain-process ViT trial: attention statistics at 1× and 2×, kNN at 2×, PNGs in the checkpoint."""
    torch.set_num_threads(2)
    cfg = trial_config({
        "epochs": 1,
        "encoder": {"name": "vit", "preset": "tiny", "dim": 8, "depth": 2, "heads": 2},
        "views": {"n_global": 2, "n_local": 0},
        "optim": {"batch_size": 256, "warmup_epochs": 0},
        "projector": {"hidden_dim": 32, "out_dim": 8},
        "objective": {"name": "sigreg", "num_slices": 16},
        "eval": {"final_probe_epochs": 0, "val_batches": 1, "attention_images": 8},
    })
    hooks = LocalHooks(directory=tmp_path)
    metrics = train(cfg, hooks)
    for suffix in ("", "_2x"):
        for stat in ("entropy", "sparsity", "max", "head_similarity", "head_diversity"):
            assert f"attn_{stat}{suffix}" in metrics
            assert f"attn_{stat}_l1{suffix}" in metrics
        # 8×8 digits, patch 2: 16 patches at 1×, 64 at 2×
        assert 0.0 <= metrics[f"attn_entropy{suffix}"] <= math.log(16 if not suffix else 64) + 1e-9
    assert 0.0 <= metrics["knn_acc_2x"] <= 1.0
    pictures = {p.name for p in (tmp_path / ARTIFACTS_DIR / "epoch_0001").iterdir()}
    assert pictures == {
        f"{kind}{suffix}.png" for kind in ("patch_pca", "attention", "attention_heads") for suffix in ("", "_2x")
    } | {"spectrum.png"}
    assert "artifacts" not in torch.load(tmp_path / "state.pt", weights_only=True)
