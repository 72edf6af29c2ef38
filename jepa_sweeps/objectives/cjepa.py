"""C-JEPA (Mo & Tong, 2024: I-JEPA's EMA teacher with VICReg's variance and covariance terms) in
the multi-view loop.

Every view's projection is pulled to the mean of an EMA teacher's projections of the global views
(no gradient into the teacher, as for ``ema``), and VICReg's variance + ``cov_weight``·covariance
on the student's projections of the global batch keeps it from collapsing: the λ form
``(1-λ)·invariance + λ·(variance + cov_weight·covariance)``. I-JEPA's predictor maps context to
masked target positions; with whole views as targets and the regulariser against collapse there
is nothing for it to map, so there is none here. λ and cov_weight default to VICReg's 25/25/1
point, a starting place: with a teacher's centre the invariance is no longer MSE(z₀, z₁)/4.
"""

from __future__ import annotations

import torch

from jepa_sweeps.objectives.base import Weighted, register
from jepa_sweeps.objectives.ema import TeacherParams, WithTeacher
from jepa_sweeps.objectives.vicreg import VICRegParams, vicreg_regulariser


class CJEPAParams(TeacherParams, VICRegParams):
    """The teacher's momentum, and VICReg's λ and cov_weight."""


@register("cjepa")
class CJEPA(WithTeacher, Weighted):
    """``(1-λ)·‖z − teacher centre‖² + λ·(variance + cov_weight·covariance)``."""

    Params = CJEPAParams

    def regulariser(self, z: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return vicreg_regulariser(z, self.params.cov_weight)
