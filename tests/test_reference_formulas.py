"""Each objective against an independent implementation of its published formula, written here
from the paper, on identical float64 inputs: loss and input gradients equal to 1e-6 relative.

Every test states the exact mapping of our parameters to the paper's, so nobody has to derive it
again. Our λ form is ``(1-λ)·invariance + λ·regulariser`` with the invariance measured to the
centre of the global views (LeJEPA).
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from jepa_sweeps.objectives import build
from jepa_sweeps.objectives.vicreg import VICREG_25_25_1

TOL = 1e-6


def _close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    """Equal to ``TOL`` relative (to the largest entry for tensors)."""
    scale = reference.abs().max()
    assert (ours - reference).abs().max() <= TOL * scale, (ours, reference)


def _loss_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = z.clone().requires_grad_(True)
    loss = fn(z)
    loss.backward()
    return loss.detach(), z.grad


def _projections(v: int, n: int, k: int, seed: int) -> torch.Tensor:
    """(V, N, K) with correlated dimensions and stds around 0.5: every term of every loss is active."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=gen, dtype=torch.float64) / k**0.5
    shared = torch.randn(1, n, k, generator=gen, dtype=torch.float64)
    return 0.5 * (shared + 0.7 * torch.randn(v, n, k, generator=gen, dtype=torch.float64)) @ mix


# -- VICReg ----------------------------------------------------------------------------------------


def vicreg_published(za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """VICReg (Bardes, Ponce, LeCun, ICLR 2022) with its coefficients λ = μ = 25, ν = 1.

    Eq. 1–2: v(Z) = 1/d Σ_j max(0, γ − S(zʲ, ε)), S(x, ε) = √(Var(x) + ε), γ = 1, ε = 1e-4;
    Eq. 3–4: C(Z) = 1/(n−1) Σ_i (z_i − z̄)(z_i − z̄)ᵀ, c(Z) = 1/d Σ_{i≠j} C(Z)²_ij.
    Combined as the official implementation (main_vicreg.py), with which 25/25/1 were tuned:
    25·MSE(Z, Z′) + 25·(v(Z) + v(Z′))/2 + 1·(c(Z) + c(Z′)), MSE averaged over the n·d entries (the
    printed Eq. 5 sums over d instead; Eq. 6 does not halve v).
    """
    n, d = za.shape

    def v(z: torch.Tensor) -> torch.Tensor:
        var = ((z - z.mean(0)) ** 2).sum(0) / (n - 1)
        return torch.clamp(1 - torch.sqrt(var + 1e-4), min=0).sum() / d

    def c(z: torch.Tensor) -> torch.Tensor:
        centred = z - z.mean(0)
        cov = sum(torch.outer(row, row) for row in centred) / (n - 1)
        off = cov - torch.diag(torch.diagonal(cov))
        return (off**2).sum() / d

    mse = ((za - zb) ** 2).mean()
    return 25 * mse + 25 * (v(za) + v(zb)) / 2 + 1 * (c(za) + c(zb))


def test_vicreg_is_the_published_loss_at_its_25_25_1_point() -> None:
    """Mapping: two global views, no local ones; ``VICREG_25_25_1`` = λ 0.2, cov_weight 0.08.

    Ours is (1-λ)·MSE(z₀, z₁)/4 + λ·[(v₀ + v₁)/2 + cov_weight·(c₀ + c₁)/2] (the invariance to the
    centre of two views is MSE/4; variance and covariance are per-view means). At λ 0.2,
    cov_weight 0.08 that is 0.2·MSE + 0.1·(v₀ + v₁) + 0.008·(c₀ + c₁) = 0.008 × VICReg's
    25·MSE + 12.5·(v₀ + v₁) + (c₀ + c₁): the scale is (1-λ)/4 ÷ 25. Put back λ 0.5, cov_weight
    1/25 (6.25 : 25 : 0.5) and this test fails.
    """
    z = _projections(2, 32, 8, seed=0)
    objective = build("vicreg", **VICREG_25_25_1)
    scale = (1 - VICREG_25_25_1["lam"]) / 4 / 25
    ours, ours_grad = _loss_and_grad(lambda x: objective(x, n_global=2)["loss"], z)
    ref, ref_grad = _loss_and_grad(lambda x: scale * vicreg_published(x[0], x[1]), z)
    _close(ours, ref)
    _close(ours_grad, ref_grad)
    assert math.isclose(scale, 0.008)


def test_vicreg_defaults_are_the_25_25_1_point() -> None:
    assert build("vicreg").params.model_dump() == VICREG_25_25_1


# -- InfoNCE ---------------------------------------------------------------------------------------


def nt_xent_published(za: torch.Tensor, zb: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's NT-Xent (Chen et al., ICML 2020, Eq. 1 and Algorithm 1): the 2N samples ordered
    (z_1, z′_1, z_2, z′_2, ...), ℓ(i, j) = −log exp(sim(z_i, z_j)/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ)
    with cosine sim, L = 1/(2N) Σ_k [ℓ(2k−1, 2k) + ℓ(2k, 2k−1)]."""
    samples = [s for pair in zip(za, zb) for s in pair]

    def sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b / (a.norm() * b.norm())

    def ell(i: int, j: int) -> torch.Tensor:
        denominator = sum(torch.exp(sim(samples[i], samples[k]) / tau) for k in range(len(samples)) if k != i)
        return -torch.log(torch.exp(sim(samples[i], samples[j]) / tau) / denominator)

    n = len(za)
    return sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def multi_positive_published(z: torch.Tensor, tau: float) -> torch.Tensor:
    """Supervised contrastive loss L^sup_out (Khosla et al., NeurIPS 2020, Eq. 2) with the source
    image as the label: for every anchor i among the V·N views, P(i) = the other V−1 views of its
    image, A(i) = every view but i; L_i = −1/|P(i)| Σ_{p∈P(i)} log exp(s_ip/τ) / Σ_{a∈A(i)} exp(s_ia/τ),
    cosine s; averaged over anchors (the paper sums)."""
    v, n, _ = z.shape
    flat = F.normalize(z.reshape(v * n, -1), dim=-1)
    image = torch.arange(n).repeat(v)
    total = z.new_zeros(())
    for i in range(v * n):
        others = [a for a in range(v * n) if a != i]
        log_denominator = torch.logsumexp(torch.stack([flat[i] @ flat[a] / tau for a in others]), dim=0)
        positives = [p for p in others if image[p] == image[i]]
        total = total - sum(flat[i] @ flat[p] / tau - log_denominator for p in positives) / len(positives)
    return total / (v * n)


def test_infonce_at_lambda_1_with_two_views_is_nt_xent() -> None:
    """Mapping: λ = 1 (no invariance term), temperature = τ, two views: our loss = NT-Xent."""
    z = _projections(2, 12, 6, seed=1)
    objective = build("infonce", lam=1.0, temperature=0.2)
    ours, ours_grad = _loss_and_grad(lambda x: objective(x, n_global=2)["loss"], z)
    ref, ref_grad = _loss_and_grad(lambda x: nt_xent_published(x[0], x[1], 0.2), z)
    _close(ours, ref)
    _close(ours_grad, ref_grad)


def test_infonce_at_lambda_1_with_more_views_is_the_multi_positive_form() -> None:
    """Mapping: λ = 1, temperature = τ, V = 4 views (2 global + 2 local; which are global does not
    matter at λ = 1): our loss = L^sup_out with image identity as label, averaged over anchors."""
    z = _projections(4, 6, 5, seed=2)
    objective = build("infonce", lam=1.0, temperature=0.3)
    ours, ours_grad = _loss_and_grad(lambda x: objective(x, n_global=2)["loss"], z)
    ref, ref_grad = _loss_and_grad(lambda x: multi_positive_published(x, 0.3), z)
    _close(ours, ref)
    _close(ours_grad, ref_grad)


# -- SIGReg ----------------------------------------------------------------------------------------


def sigreg_published(x: torch.Tensor, global_step: int, num_slices: int, t: torch.Tensor) -> torch.Tensor:
    """LeJEPA (Balestriero & LeCun, 2025), Algorithm 1: directions A ~ N(0, 1)^(K×M) from a generator
    seeded with the global step, columns normalised; complex empirical CF of x·A at knots t;
    err = |ecf − φ|²·φ with φ(t) = exp(−t²/2); T = trapz(err, t)·N, averaged over the M slices."""
    g = torch.Generator()
    g.manual_seed(global_step)
    a = torch.randn(x.size(1), num_slices, generator=g)
    a /= a.norm(p=2, dim=0)
    x_t = (x @ a.to(x.dtype)).unsqueeze(2) * t  # (N, M, T)
    ecf = (1j * x_t).exp().mean(0)
    exp_f = torch.exp(-0.5 * t**2)
    err = (ecf - exp_f).abs().square().mul(exp_f)
    return (torch.trapezoid(err, t, dim=1) * x.size(0)).mean()


def lejepa_published(z: torch.Tensor, n_global: int, lam: float, step: int, num_slices: int, t: torch.Tensor) -> torch.Tensor:
    """LeJEPA's loss: (1−λ)·mean((centre − z)²) + λ·mean over views of SIGReg, centre = mean of
    the global views' embeddings."""
    centre = z[:n_global].mean(0)
    sim = (centre - z).square().mean()
    return (1 - lam) * sim + lam * torch.stack([sigreg_published(view, step, num_slices, t) for view in z]).mean()


@pytest.mark.parametrize(
    ("num_knots", "t_max"),
    [(9, 5.0), (17, 3.0)],
    ids=["paper-knots", "our-default-knots"],
)
def test_sigreg_is_lejepa_algorithm_1(num_knots: int, t_max: float) -> None:
    """Mapping: λ = λ, num_slices = M, step = global_step; our ``num_knots`` points on
    [0, t_max] with doubled trapezoid weights = Algorithm 1's trapezoid on
    t = linspace(−t_max, t_max, 2·num_knots − 1), the integrand being even in t. So num_knots 9,
    t_max 5 is the paper's t = linspace(−5, 5, 17); our default 17 on [0, 3] is linspace(−3, 3, 33)."""
    z = _projections(4, 24, 8, seed=3)
    t = torch.linspace(-t_max, t_max, 2 * num_knots - 1, dtype=torch.float64)
    objective = build("sigreg", lam=0.3, num_slices=64, num_knots=num_knots, t_max=t_max)
    ours, ours_grad = _loss_and_grad(lambda x: objective(x, n_global=2, step=11)["loss"], z)
    ref, ref_grad = _loss_and_grad(lambda x: lejepa_published(x, 2, 0.3, 11, 64, t), z)
    _close(ours, ref)
    _close(ours_grad, ref_grad)
