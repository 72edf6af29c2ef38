"""VICReg's variance and covariance terms as the regulariser of the multi-view loss.

Both statistics are taken per view on the gathered global batch (gather with gradient), as in
the official implementation, and averaged over views: the variance hinge averaged over views is
the official per-branch halving, while VICReg *sums* the covariance over its two branches. Our
invariance term is the mean squared distance to the centre of the global views, for two views
MSE(z₀, z₁)/4. So VICReg's 25 : 25 : 1 (invariance : variance : covariance) is
``VICREG_25_25_1`` = λ 0.2, cov_weight 0.08, the whole loss then 0.008 × VICReg's; λ 0.5 with
cov_weight 1/25 would weigh them 6.25 : 25 : 0.5.
"""

from __future__ import annotations

import torch
from pydantic import Field

from jepa_sweeps.distributed import gather_cat
from jepa_sweeps.objectives.base import Weighted, WeightedParams, register
from jepa_sweeps.precision import fp32

#: our parameters at which the loss is proportional to VICReg's with its 25/25/1 (2 global views)
VICREG_25_25_1 = {"lam": 0.2, "cov_weight": 0.08}


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


def vicreg_regulariser(z: torch.Tensor, cov_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``variance + cov_weight·covariance`` of the global batch of ``z`` (V, N_local, K), and both terms."""
    var_loss, cov_loss = variance_covariance(gather_cat(z, dim=1))
    return var_loss + cov_weight * cov_loss, {"var_loss": var_loss, "cov_loss": cov_loss}


class VICRegParams(WeightedParams):
    lam: float = Field(VICREG_25_25_1["lam"], ge=0.0, le=1.0, description="weight λ of the regulariser")
    cov_weight: float = Field(
        VICREG_25_25_1["cov_weight"], ge=0.0, le=100.0, description="covariance vs variance weight"
    )


@register("vicreg")
class VICReg(Weighted):
    """``(1-λ)·invariance + λ·(variance + cov_weight·covariance)``."""

    Params = VICRegParams

    def regulariser(self, z: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return vicreg_regulariser(z, self.params.cov_weight)
