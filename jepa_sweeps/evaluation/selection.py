"""Label-free selection scores: what a sweep can rank trials by when the data has no labels.

Computed at every evaluation from things the trial has anyway (held-out views, eval embeddings):

- ``sel_loss`` — the objective's own loss on the fixed held-out views (lower is better; the
  LeJEPA paper reports it tracks downstream accuracy for a fixed λ),
- ``sel_loss_scaled`` — ``sel_loss / λ^α`` (lower is better), which makes losses at different λ
  comparable; NaN for λ = 0 and objectives without λ: Tune needs the sweep metric in every
  result, and NaN is what it is — undefined — which MLflow never receives (the logger drops
  non-finite values) and the sweep ranks last (``sweep.Search``),
- ``rankme`` — effective rank of the eval embeddings (higher is better; ``probes.rankme``),
- ``isotropy`` — the sliced Epps–Pulley statistic of the standardised eval embeddings along fixed
  directions (lower is better: ≈1 for an isotropic Gaussian, ≈0.4·N for a collapsed embedding).

``MODES`` says which way is better, for a spec's ``metric``/``mode``.
"""

from __future__ import annotations

import math

import torch

from jepa_sweeps.objectives.sigreg import slice_directions

MODES = {"sel_loss": "min", "sel_loss_scaled": "min", "rankme": "max", "isotropy": "min"}
NEEDS_LABELS = ("knn_acc", "linear_acc", "final_linear_acc", "knn_acc_2x")  # absent for unlabelled data
ISOTROPY_SEED = 20240101  # fixed directions: the statistic is comparable across epochs and trials


def scaled_loss(loss: float, lam: float | None, alpha: float) -> float:
    """``loss / λ^α``; NaN when λ is absent or 0 (the scaling is undefined there)."""
    if lam is None or lam <= 0:
        return math.nan
    return loss / lam**alpha


@torch.no_grad()
def isotropy(features: torch.Tensor, num_slices: int = 256, num_knots: int = 17, t_max: float = 3.0) -> float:
    """Epps–Pulley statistic (N-scaled, averaged over slices) of per-dimension standardised
    features projected on ``num_slices`` fixed unit directions, against N(0, 1).

    Per-dimension standardisation removes scale, so what remains is correlation between dimensions
    and non-Gaussian shape: exactly what SIGReg pushes towards zero during training.
    """
    x = features.double()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    proj = x @ slice_directions(x.shape[1], num_slices, ISOTROPY_SEED, x)  # (N, M)
    t = torch.linspace(0.0, t_max, num_knots, dtype=x.dtype)
    weights = torch.full_like(t, t_max / (num_knots - 1))
    weights[[0, -1]] /= 2
    target = torch.exp(-t.square() / 2)
    xt = proj.unsqueeze(-1) * t  # (N, M, T)
    err = (xt.cos().mean(0) - target).square() + xt.sin().mean(0).square()  # (M, T)
    return float((err @ (2 * weights * target)).mean() * x.shape[0])


def selection_scores(val_loss: float, lam: float | None, alpha: float, features: torch.Tensor) -> dict[str, float]:
    """The label-free scores of one evaluation (RankMe is logged by the caller already)."""
    return {"sel_loss": val_loss, "sel_loss_scaled": scaled_loss(val_loss, lam, alpha), "isotropy": isotropy(features)}
