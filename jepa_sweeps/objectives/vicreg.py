"""VICReg's variance and covariance terms as the regulariser of the multi-view loss.

Both statistics are taken per view on the gathered global batch (gather with gradient), as in
the official implementation, and averaged over views. The variance hinge averaged over views is
the official per-branch halving; ``cov_weight`` = 1/25 makes λ=0.5 weigh invariance : variance :
covariance like VICReg's 25 : 25 : 1.
"""

from __future__ import annotations

import torch
from pydantic import Field

from jepa_sweeps.distributed import gather_cat
from jepa_sweeps.objectives.base import Objective, WeightedParams, invariance, register
from jepa_sweeps.precision import fp32


@fp32  # centring, var and zᵀz/(N−1) cancel large terms: bf16 leaves few correct bits of the hinge
def variance_covariance(z: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinge on the per-dimension std and sum of squared off-diagonal covariances / K, for
    ``z`` (V, N, K); each averaged over views."""
    n, k = z.shape[-2], z.shape[-1]
    z = z - z.mean(dim=-2, keepdim=True)
    std = torch.sqrt(z.var(dim=-2) + eps)  # (V, K), unbiased like the official code
    var_loss = torch.relu(1 - std).mean()
    cov = z.transpose(-1, -2) @ z / (n - 1)  # (V, K, K)
    off_diag = cov.square().sum(dim=(-1, -2)) - torch.diagonal(cov, dim1=-2, dim2=-1).square().sum(-1)
    return var_loss, (off_diag / k).mean()


class VICRegParams(WeightedParams):
    lam: float = Field(0.5, ge=0.0, le=1.0, description="weight λ of the regulariser")
    cov_weight: float = Field(1 / 25, ge=0.0, le=100.0, description="covariance vs variance weight")


@register("vicreg")
class VICReg(Objective):
    """``(1-λ)·invariance + λ·(variance + cov_weight·covariance)``."""

    Params = VICRegParams

    def __init__(self, lam: float, cov_weight: float) -> None:
        super().__init__()
        self.lam, self.cov_weight = lam, cov_weight

    def forward(self, z: torch.Tensor, n_global: int = 2, step: int = 0) -> dict[str, torch.Tensor]:
        inv = invariance(z, n_global)
        var_loss, cov_loss = variance_covariance(gather_cat(z, dim=1))
        reg = var_loss + self.cov_weight * cov_loss
        return {
            "loss": (1 - self.lam) * inv + self.lam * reg,
            "inv_loss": inv,
            "reg_loss": reg,
            "var_loss": var_loss,
            "cov_loss": cov_loss,
        }
