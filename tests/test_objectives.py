"""Objectives: reference values, and exactness under DDP against one process on the whole batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from jepa_sweeps import objectives
from jepa_sweeps.objectives import build
from jepa_sweeps.objectives.sigreg import sigreg_statistic
from tests.distributed_utils import run_distributed

V, N, K = 4, 16, 8  # N is the global batch; each of 2 ranks holds N/2


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(V, N, K, generator=gen, dtype=torch.float64)
    target = torch.randn(2, N, K, generator=gen, dtype=torch.float64)
    return z, target


def _objective(name: str) -> objectives.Objective:
    torch.manual_seed(0)
    params = {"num_slices": 32} if name == "sigreg" else {}
    return build(name, embed_dim=K, **params).double()


def _loss_and_grad(name: str, z: torch.Tensor, target: torch.Tensor) -> tuple[float, torch.Tensor]:
    z = z.clone().requires_grad_(True)
    extra = {"target": target} if name == "ema" else {}
    out = _objective(name)(z, n_global=2, step=7, **extra)
    out["loss"].backward()
    return float(out["loss"].detach()), z.grad


def _plain_all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The known bug: an in-place collective autograd does not see (gradient stays local)."""
    y = x.clone()
    dist.all_reduce(y)
    return y


def _plain_gather(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """The known bug: gathered copies carry no gradient back to their owners."""
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=dim)


NAMES = ("sigreg", "vicreg", "infonce", "ema")


def _rank_results(rank: int, world: int) -> dict[tuple[str, bool], tuple[float, torch.Tensor]]:
    """Every objective on this rank's half, first with the real collectives, then with plain ones."""
    import jepa_sweeps.distributed as D
    from jepa_sweeps.objectives import infonce, vicreg

    z, target = _inputs()
    half = N // world
    part = slice(rank * half, (rank + 1) * half)
    results = {(name, False): _loss_and_grad(name, z[:, part], target[:, part]) for name in NAMES}
    D.all_reduce_sum = _plain_all_reduce_sum  # sigreg's all_reduce_mean and the norms call it
    vicreg.gather_cat = infonce.gather_cat = _plain_gather
    results.update({(name, True): _loss_and_grad(name, z[:, part], target[:, part]) for name in NAMES})
    return results


@pytest.fixture(scope="module")
def two_rank_results() -> list[dict[tuple[str, bool], tuple[float, torch.Tensor]]]:
    return run_distributed(_rank_results)


def _matches_one_process(name: str, plain: bool, results: list) -> bool:
    z, target = _inputs()
    loss, grad = _loss_and_grad(name, z, target)
    mean_loss = sum(r[name, plain][0] for r in results) / len(results)
    rank_grads = torch.cat([r[name, plain][1] for r in results], dim=1) / len(results)
    assert abs(mean_loss - loss) <= 1e-5 * abs(loss), (mean_loss, loss)
    return torch.allclose(rank_grads, grad, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_ddp_loss_and_input_gradients_match_one_process(name: str, two_rank_results: list) -> None:
    assert _matches_one_process(name, False, two_rank_results)


@pytest.mark.parametrize("name", ["sigreg", "vicreg", "infonce"])
def test_plain_collectives_break_the_gradients(name: str, two_rank_results: list) -> None:
    """The DDP test above must be able to fail: with a non-autograd collective it does."""
    assert not _matches_one_process(name, True, two_rank_results)


def test_sigreg_reference_values() -> None:
    gen = torch.Generator().manual_seed(1)
    for n in (256, 1024):
        gauss = [
            float(sigreg_statistic(torch.randn(n, 32, generator=gen), num_slices=256, step=s)) for s in range(20)
        ]
        assert 0.95 <= sum(gauss) / len(gauss) <= 1.15, (n, gauss)
        zeros = [float(sigreg_statistic(torch.zeros(n, 32), num_slices=256, step=s)) for s in range(20)]
        assert abs(sum(zeros) / len(zeros) / (0.40 * n) - 1) <= 0.05


def test_sigreg_statistic_averages_leading_dims_and_redraws_directions() -> None:
    x = torch.randn(3, 64, 16)
    per_view = torch.stack([sigreg_statistic(x[i], num_slices=32, step=5) for i in range(3)])
    assert torch.allclose(sigreg_statistic(x, num_slices=32, step=5), per_view.mean(), rtol=1e-5)
    assert sigreg_statistic(x, num_slices=32, step=5) != sigreg_statistic(x, num_slices=32, step=6)


def test_weighted_loss_and_invariance() -> None:
    z, _ = _inputs()
    for name in ("sigreg", "vicreg", "infonce"):
        obj = build(name, lam=0.3)
        out = obj(z.float(), n_global=2)
        expected = 0.7 * out["inv_loss"] + 0.3 * out["reg_loss"]
        assert torch.allclose(out["loss"], expected)
        centre = z[:2].float().mean(0)
        assert torch.allclose(out["inv_loss"], (z.float() - centre).square().mean())


def test_infonce_two_views_is_nt_xent() -> None:
    """With V=2 the multi-view loss reduces to SimCLR's NT-Xent over 2N samples."""
    z = torch.randn(2, 8, 5)
    got = build("infonce", lam=1.0, temperature=0.5)(z)["reg_loss"]
    x = torch.nn.functional.normalize(torch.cat([z[0], z[1]]), dim=1)
    sim = x @ x.T / 0.5
    sim.fill_diagonal_(float("-inf"))
    labels = torch.cat([torch.arange(8, 16), torch.arange(0, 8)])
    assert torch.allclose(got, torch.nn.functional.cross_entropy(sim, labels), rtol=1e-5)


def test_vicreg_collapsed_and_whitened() -> None:
    obj = build("vicreg", lam=1.0, cov_weight=1.0)
    collapsed = obj(torch.zeros(2, 64, 8))
    assert torch.isclose(collapsed["var_loss"], torch.tensor(1 - 1e-2), atol=1e-4)
    white = torch.linalg.qr(torch.randn(256, 8))[0] * 256**0.5
    white = (white - white.mean(0)).expand(2, 256, 8)
    out = obj(white.contiguous())
    assert out["var_loss"] < 1e-2 and out["cov_loss"] < 1e-2


def test_registry_and_bad_params() -> None:
    assert set(objectives.REGISTRY) >= {"sigreg", "vicreg", "infonce", "ema"}
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        build("nope")
    with pytest.raises(ValueError):
        build("sigreg", lam=1.5)
    with pytest.raises(ValueError):
        build("ema", lam=0.1)
