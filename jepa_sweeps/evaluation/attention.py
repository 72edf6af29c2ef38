"""Attention statistics of ViT encoders: where the CLS token looks, and whether heads differ.

These are the numbers a LeJEPA reproduction on CIFAR-100 (ViT-nano) reported by hand, computed on a fixed set of
eval images so that they compare across epochs and trials: entropy of the CLS→patch distribution,
sparsity, max attention, and the mean pairwise similarity of the heads' CLS→patch maps ("head
collapse" when it approaches 1). The CLS→CLS weight is excluded and the CLS row renormalised over
the patch tokens, so a uniform map has entropy log(#patches) whatever the CLS token keeps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STATISTICS = ("entropy", "sparsity", "max", "head_similarity", "head_diversity")


def cls_patch_attention(attn: torch.Tensor) -> torch.Tensor:
    """The CLS row of (N, heads, T, T) attention (token 0 = CLS) over the T-1 patches, summing to 1."""
    row = attn[:, :, 0, 1:].double()
    return row / row.sum(-1, keepdim=True).clamp_min(1e-12)


def layer_statistics(attn: torch.Tensor, threshold: float = 0.01) -> dict[str, float]:
    """Statistics of one layer's (N, heads, T, T) attention, averaged over images and heads.

    Head similarity is the mean cosine similarity over pairs of distinct heads; a single head
    has no pairs, so similarity and diversity are left out for it.
    """
    p = cls_patch_attention(attn)
    stats = {
        "entropy": float(-torch.special.xlogy(p, p).sum(-1).mean()),
        "sparsity": float((p < threshold).double().mean()),
        "max": float(p.amax(-1).mean()),
    }
    heads = p.shape[1]
    if heads > 1:
        unit = F.normalize(p, dim=-1)
        cosine = unit @ unit.transpose(1, 2)  # (N, heads, heads)
        off_diagonal = ~torch.eye(heads, dtype=torch.bool, device=p.device)
        similarity = float(cosine[:, off_diagonal].mean())
        stats.update(head_similarity=similarity, head_diversity=1.0 - similarity)
    return stats


def attention_metrics(maps: list[torch.Tensor], threshold: float = 0.01, suffix: str = "") -> dict[str, float]:
    """``attn_<stat>_l<i><suffix>`` per layer and ``attn_<stat><suffix>`` averaged over layers."""
    per_layer = [layer_statistics(a, threshold) for a in maps]
    metrics: dict[str, float] = {}
    for i, stats in enumerate(per_layer):
        metrics.update({f"attn_{k}_l{i}{suffix}": v for k, v in stats.items()})
    for key in STATISTICS:
        values = [stats[key] for stats in per_layer if key in stats]
        if values:
            metrics[f"attn_{key}{suffix}"] = sum(values) / len(values)
    return metrics


@torch.no_grad()
def attention_maps(encoder: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """One (N, heads, T, T) map per layer of a ViT on prepared ``images``, in eval mode."""
    was_training = encoder.training
    encoder.eval()
    _, maps = encoder(images, return_attention=True)
    encoder.train(was_training)
    return [m.float() for m in maps]
