"""SIGReg: the sliced Epps–Pulley test of the embeddings against an isotropic Gaussian (LeJEPA).

Each of M random unit directions projects the (global) batch to one dimension; the empirical
characteristic function there is compared with N(0,1)'s on fixed knots. Under DDP only the
per-rank means of cos and sin are all-reduced (autograd-aware), so the statistic is exactly the
one of the global batch and its gradient reaches every rank.
"""

from __future__ import annotations

import torch
from pydantic import Field

from jepa_sweeps.distributed import all_reduce_mean, world_size
from jepa_sweeps.objectives.base import Weighted, WeightedParams, register
from jepa_sweeps.precision import fp32


def _knots(num_knots: int, t_max: float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Knots on [0, t_max] and trapezoid weights, doubled for the symmetric half-line, times the
    Gaussian window exp(-t²/2)."""
    t = torch.linspace(0.0, t_max, num_knots, device=like.device, dtype=like.dtype)
    dt = t_max / (num_knots - 1)
    trapezoid = torch.full_like(t, dt)
    trapezoid[[0, -1]] = dt / 2
    window = torch.exp(-t.square() / 2)
    return t, 2 * trapezoid * window


def slice_directions(dim: int, num_slices: int, step: int, like: torch.Tensor) -> torch.Tensor:
    """(dim, num_slices) unit directions, redrawn each step from the step number alone so every
    rank draws the same ones without a broadcast."""
    gen = torch.Generator().manual_seed(int(step) & 0x7FFF_FFFF_FFFF_FFFF)
    a = torch.randn(dim, num_slices, generator=gen)
    return (a / a.norm(dim=0, keepdim=True)).to(device=like.device, dtype=like.dtype)


@fp32  # cos(t·x) at |t·x| ≫ 1 is noise with bf16's 8-bit mantissa; the ECF's mean needs fp32 sums
def sigreg_statistic(
    x: torch.Tensor, *, num_slices: int, step: int, num_knots: int = 17, t_max: float = 3.0
) -> torch.Tensor:
    """Sliced Epps–Pulley statistic of ``x`` (..., N, K), averaged over slices and leading dims.

    Scaled by the global N: ≈1.05 for Gaussian inputs at any N, ≈0.41·N for collapsed ones.
    """
    n_local = x.shape[-2]
    t, weights = _knots(num_knots, t_max, x)
    proj = x @ slice_directions(x.shape[-1], num_slices, step, x)  # (..., N, M)
    xt = proj.unsqueeze(-1) * t  # (..., N, M, T)
    cos_mean = all_reduce_mean(xt.cos().mean(-3))  # (..., M, T)
    sin_mean = all_reduce_mean(xt.sin().mean(-3))
    target = torch.exp(-t.square() / 2)
    err = (cos_mean - target).square() + sin_mean.square()
    return (err @ weights).mean() * (n_local * world_size())


class SIGRegParams(WeightedParams):
    num_slices: int = Field(256, ge=1, le=65536, description="random directions per step (M)")
    num_knots: int = Field(17, ge=3, le=257)
    t_max: float = Field(3.0, gt=0.0, le=20.0)


@register("sigreg")
class SIGReg(Weighted):
    """LeJEPA: ``(1-λ)·invariance + λ·mean_v SIGReg(z_v)``."""

    Params = SIGRegParams

    def regulariser(self, z: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        return sigreg_statistic(z, num_slices=p.num_slices, step=step, num_knots=p.num_knots, t_max=p.t_max), {}
