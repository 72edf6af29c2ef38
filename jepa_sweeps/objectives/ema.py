"""EMA teacher + stop-gradient (BYOL-style) in the multi-view loop.

The student's predictor output for every view is pulled to the mean of the teacher's projections
of the global views, with BYOL's ``2 − 2·cos`` and no gradient into the teacher. The teacher
itself (an EMA copy of backbone + projector) is kept by the trial loop (``needs_teacher``); this
module owns the predictor and the loss. There is no λ: collapse is avoided by the asymmetry.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from jepa_sweeps.models.norm import GlobalBatchNorm
from jepa_sweeps.objectives.base import Objective, ObjectiveParams, register
from jepa_sweeps.precision import fp32


class EMAParams(ObjectiveParams):
    momentum: float = Field(0.996, ge=0.0, lt=1.0, description="teacher momentum at step 0")
    predictor_hidden: int = Field(256, ge=1, le=65536)


def teacher_momentum(base: float, step: int, total_steps: int) -> float:
    """Cosine schedule from ``base`` to 1 over training (BYOL)."""
    progress = min(step / max(total_steps, 1), 1.0)
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


# fp32 without a wrapper: both sides are fp32 master weights and in-place lerp_ is not autocast
# (checked in tests/test_precision.py); in bf16 the (1−m)·(s−t) steps would round away as m → 1.
@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← m·teacher + (1−m)·student, after the optimizer step; buffers are copied."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach(), 1 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


# 1 − cos is small once views agree: in bf16 (cos steps of 2⁻⁸ near 1) it would be mostly rounding.
cosine = fp32(F.cosine_similarity)


@register("ema")
class EMA(Objective):
    Params = EMAParams
    needs_teacher = True

    def __init__(self, momentum: float, predictor_hidden: int, embed_dim: int = 64) -> None:
        super().__init__()
        self.momentum = momentum
        self.predictor = nn.Sequential(
            nn.Linear(embed_dim, predictor_hidden),
            GlobalBatchNorm(predictor_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(predictor_hidden, embed_dim),
        )

    def forward(
        self, z: torch.Tensor, n_global: int = 2, step: int = 0, target: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if target is None:
            raise ValueError("the ema objective needs the teacher's global-view projections")
        v, n, k = z.shape
        # fp32: the predictor is projection-sized (cheap), and in bf16 its input gradient was ~5 % off.
        pred = fp32(self.predictor)(z.reshape(v * n, k)).reshape(v, n, k)
        centre = target.detach().mean(0)
        loss = (2 - 2 * cosine(pred, centre.expand_as(pred), dim=-1)).mean()
        return {"loss": loss, "inv_loss": loss, "reg_loss": torch.zeros_like(loss)}
