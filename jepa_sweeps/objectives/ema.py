"""EMA teacher + stop-gradient (BYOL-style) in the multi-view loop.

The student's predictor output for every view is pulled to the mean of the teacher's projections
of the global views, with BYOL's ``2 − 2·cos`` and no gradient into the teacher. There is no λ:
collapse is avoided by the asymmetry. The teacher (an EMA copy of backbone + projector) is a
submodule of the objective, so checkpoints and DDP carry it like any other state;
``WithTeacher`` gives it to any objective whose invariance targets come from a teacher.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from jepa_sweeps.models.norm import GlobalBatchNorm
from jepa_sweeps.objectives.base import Objective, ObjectiveParams, register
from jepa_sweeps.precision import fp32


class TeacherParams(ObjectiveParams):
    momentum: float = Field(0.996, ge=0.0, lt=1.0, description="teacher momentum at step 0")


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


class Teacher(nn.Module):
    """EMA copy of backbone + projector: global views → projections, never trained directly.

    It refers to the student's parts without registering them (a tuple), so they are neither
    duplicated in the ``state_dict`` nor counted twice as parameters.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.projector = copy.deepcopy(projector).requires_grad_(False)
        self.student = (backbone, projector)

    @torch.no_grad()
    def forward(self, globals_: torch.Tensor) -> torch.Tensor:
        dtype = next(self.projector.parameters()).dtype
        h = self.backbone(globals_.to(dtype).flatten(0, 1))
        return self.projector(h).unflatten(0, globals_.shape[:2])

    def update(self, momentum: float) -> None:
        ema_update(self.backbone, self.student[0], momentum)
        ema_update(self.projector, self.student[1], momentum)


class WithTeacher:
    """The hooks of an objective whose invariance targets are an EMA teacher's projections of
    the global views; mix in before ``Objective`` with params that include ``TeacherParams``."""

    params: TeacherParams
    teacher: Teacher

    def setup(self, backbone: nn.Module, projector: nn.Module) -> None:
        self.teacher = Teacher(backbone, projector)

    def targets(self, globals_: torch.Tensor) -> torch.Tensor:
        return self.teacher(globals_)

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        momentum = teacher_momentum(self.params.momentum, step, total_steps)
        self.teacher.update(momentum)
        return {"momentum": momentum}


class EMAParams(TeacherParams):
    predictor_hidden: int = Field(256, ge=1, le=65536)


@register("ema")
class EMA(WithTeacher, Objective):
    Params = EMAParams

    def __init__(self, params: EMAParams, embed_dim: int) -> None:
        super().__init__(params, embed_dim)
        self.predictor = nn.Sequential(
            nn.Linear(embed_dim, params.predictor_hidden),
            GlobalBatchNorm(params.predictor_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(params.predictor_hidden, embed_dim),
        )

    @classmethod
    def unknown_parameter(cls, param: str) -> str:
        if param == "lam":
            return f"not a parameter of objective {cls.name!r} (no λ: the teacher's asymmetry, not a regulariser, avoids collapse)"
        return super().unknown_parameter(param)

    def forward(
        self, z: torch.Tensor, n_global: int = 2, step: int = 0, target: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if target is None:
            raise ValueError("the ema objective needs its teacher's targets (from ``targets``)")
        v, n, k = z.shape
        # fp32: the predictor is projection-sized (cheap), and in bf16 its input gradient was ~5 % off.
        pred = fp32(self.predictor)(z.reshape(v * n, k)).reshape(v, n, k)
        centre = target.detach().mean(0)
        loss = (2 - 2 * cosine(pred, centre.expand_as(pred), dim=-1)).mean()
        return {"loss": loss, "inv_loss": loss, "reg_loss": torch.zeros_like(loss)}
