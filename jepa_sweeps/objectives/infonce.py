"""Multi-view NT-Xent (SimCLR's InfoNCE) as the regulariser.

Anchors are this rank's views; keys are every view of every image in the global batch (gathered
with gradient). An anchor's positives are the other views of its own image, its negatives every
view of every other image; the loss averages −log softmax over the positives (with two views this
is exactly NT-Xent). λ = 1 is SimCLR-style contrastive learning.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from jepa_sweeps.distributed import gather_cat, rank
from jepa_sweeps.objectives.base import Refusal, Weighted, WeightedParams, register
from jepa_sweeps.precision import fp32


@fp32  # logits/τ reach ±1/τ = ±10: bf16 steps of 0.06 there shift every softmax weight by ~6 %
def multiview_nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over (V, N, K) local projections against the gathered global batch."""
    v, n, _ = z.shape
    local = F.normalize(z, dim=-1)
    keys = gather_cat(local, dim=1)  # (V, N_global, K), rank-ordered
    offset = rank() * n
    n_global = keys.shape[1]
    logits = local.reshape(v * n, -1) @ keys.reshape(v * keys.shape[1], -1).T / temperature
    # anchor (view a, local sample i) and key (view b, global sample j)
    anchor_view = torch.arange(v, device=z.device).repeat_interleave(n)
    anchor_img = torch.arange(n, device=z.device).repeat(v) + offset
    key_view = torch.arange(v, device=z.device).repeat_interleave(n_global)
    key_img = torch.arange(n_global, device=z.device).repeat(v)
    same_img = anchor_img[:, None] == key_img[None, :]
    self_pair = same_img & (anchor_view[:, None] == key_view[None, :])
    logits = logits.masked_fill(self_pair, float("-inf"))
    log_prob = logits.log_softmax(dim=-1)
    positives = same_img & ~self_pair
    return -(log_prob.masked_fill(~positives, 0).sum(-1) / (v - 1)).mean()


class InfoNCEParams(WeightedParams):
    lam: float = Field(0.5, ge=0.0, le=1.0, description="weight λ of the regulariser")
    temperature: float = Field(0.1, gt=0.0, le=10.0)


@register("infonce")
class InfoNCE(Weighted):
    """``(1-λ)·invariance + λ·NT-Xent``."""

    Params = InfoNCEParams

    @classmethod
    def refuse(cls, trial: Any) -> Refusal | None:
        if trial.views.n_global + trial.views.n_local < 2:
            return Refusal("objective.name", cls.name, "needs at least 2 views (views.n_global + views.n_local)")
        return None

    def regulariser(self, z: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return multiview_nt_xent(z, self.params.temperature), {}
