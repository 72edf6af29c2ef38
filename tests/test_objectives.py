"""Objectives, each from the registry: exactness under DDP against one process on the whole batch,
the λ form, their hooks and config refusals. A new objective is covered without editing this file."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from jepa_sweeps.config import ConfigError, trial_config
from jepa_sweeps.models.projector import Projector
from jepa_sweeps.config import TrialConfig, ViewsConfig
from jepa_sweeps.objectives import REGISTRY, Objective, Weighted, build, has_param
from jepa_sweeps.objectives.sigreg import sigreg_statistic
from tests.distributed_utils import run_distributed

V, N, K = 4, 16, 8  # N is the global batch; each of 2 ranks holds N/2
N_GLOBAL, D = 2, 6  # global views, and the size of the "images" a teacher (if any) sees
NAMES = sorted(REGISTRY)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Projections z (V, N, K) and global views (N_GLOBAL, N, D) for the objective's ``targets``."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(V, N, K, generator=gen, dtype=torch.float64)
    globals_ = torch.randn(N_GLOBAL, N, D, generator=gen, dtype=torch.float64)
    return z, globals_


def _objective(name: str) -> Objective:
    return _objective_and_student(name)[0]


def _objective_and_student(name: str) -> tuple[Objective, nn.Module]:
    """The objective, set up from a small student whose projector has global-batch norms."""
    torch.manual_seed(0)
    objective = build(name, embed_dim=K).double()
    student = nn.Sequential(nn.Linear(D, D), Projector(D, 16, K, num_layers=2)).double()
    objective.setup(student[0], student[1])
    return objective, student


def _loss_and_grad(name: str, z: torch.Tensor, globals_: torch.Tensor) -> tuple[float, torch.Tensor]:
    objective = _objective(name)
    target = objective.targets(globals_)
    z = z.clone().requires_grad_(True)
    out = objective(z, n_global=N_GLOBAL, step=7, target=target)
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


def _use_plain_collectives() -> None:
    """Swap the autograd collectives for plain ones wherever a jepa_sweeps module refers to them."""
    import jepa_sweeps.distributed as D

    swaps = [(D.all_reduce_sum, _plain_all_reduce_sum), (D.gather_cat, _plain_gather)]
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("jepa_sweeps"):
            for attr, value in list(vars(module).items()):
                for real, plain in swaps:
                    if value is real:
                        setattr(module, attr, plain)


def _rank_results(rank: int, world: int) -> dict[tuple[str, bool], tuple[float, torch.Tensor]]:
    """Every objective on this rank's half, first with the real collectives, then with plain ones."""
    z, globals_ = _inputs()
    half = N // world
    part = slice(rank * half, (rank + 1) * half)
    results = {(name, False): _loss_and_grad(name, z[:, part], globals_[:, part]) for name in NAMES}
    _use_plain_collectives()
    results.update({(name, True): _loss_and_grad(name, z[:, part], globals_[:, part]) for name in NAMES})
    return results


@pytest.fixture(scope="module")
def two_rank_results() -> list[dict[tuple[str, bool], tuple[float, torch.Tensor]]]:
    return run_distributed(_rank_results)


def _matches_one_process(name: str, plain: bool, results: list) -> bool:
    """Mean over ranks of the loss = the single-process loss (asserted), and whether each rank's
    input gradient ÷ world size = the single-process gradient of its half."""
    z, globals_ = _inputs()
    loss, grad = _loss_and_grad(name, z, globals_)
    mean_loss = sum(r[name, plain][0] for r in results) / len(results)
    rank_grads = torch.cat([r[name, plain][1] for r in results], dim=1) / len(results)
    assert abs(mean_loss - loss) <= 1e-10 * abs(loss), (mean_loss, loss)
    return torch.allclose(rank_grads, grad, rtol=1e-8, atol=1e-14)


def _couples_samples(name: str) -> bool:
    """Whether a sample's gradient depends on the other samples: only then does the loss need a
    cross-sample collective, and only then can a plain one get its gradient wrong."""
    z, globals_ = _inputs()
    _, grad = _loss_and_grad(name, z, globals_)
    moved = z.clone()
    moved[:, N // 2 :] += 1.0
    _, grad_moved = _loss_and_grad(name, moved, globals_)
    return not torch.allclose(grad[:, : N // 2], grad_moved[:, : N // 2], rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_ddp_loss_and_input_gradients_match_one_process(name: str, two_rank_results: list) -> None:
    assert _matches_one_process(name, False, two_rank_results)


@pytest.mark.parametrize("name", NAMES)
def test_plain_collectives_break_the_gradients(name: str, two_rank_results: list) -> None:
    """The DDP test above must be able to fail: with a non-autograd collective it does."""
    if not _couples_samples(name):
        pytest.skip(f"{name}: no sample's gradient depends on another's, so no collective to get wrong")
    assert not _matches_one_process(name, True, two_rank_results)


@pytest.mark.parametrize("name", [n for n in NAMES if issubclass(REGISTRY[n], Weighted)])
def test_weighted_loss_and_invariance(name: str) -> None:
    """The λ form: ``(1-λ)·inv + λ·reg``, inv to the centre of the global views or of the targets."""
    z, globals_ = _inputs()
    objective = _objective(name)
    objective.params = objective.Params(**{**objective.params.model_dump(), "lam": 0.3})
    target = objective.targets(globals_)
    out = objective(z, n_global=N_GLOBAL, target=target)
    assert torch.allclose(out["loss"], 0.7 * out["inv_loss"] + 0.3 * out["reg_loss"])
    centre = (z[:N_GLOBAL] if target is None else target).mean(0)
    assert torch.allclose(out["inv_loss"], (z - centre).square().mean())


@pytest.mark.parametrize("name", NAMES)
def test_hook_state_is_checkpointed_with_the_objective(name: str) -> None:
    """What ``setup`` builds and ``after_step`` moves is in the objective's ``state_dict``: loaded
    into a fresh objective, its targets are the moved ones, not the fresh ones."""
    _, globals_ = _inputs()
    objective, student = _objective_and_student(name)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.1)  # what an optimizer step does
    logged = objective.after_step(3, 10)
    assert all(isinstance(v, float) and math.isfinite(v) for v in logged.values()), logged
    restored = _objective(name)
    restored.load_state_dict(objective.state_dict())
    moved, loaded, fresh = (o.targets(globals_) for o in (objective, restored, _objective(name)))
    if moved is None:
        assert loaded is None and fresh is None
    else:
        assert torch.equal(moved, loaded) and not torch.allclose(moved, fresh)


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


def test_vicreg_collapsed_and_whitened() -> None:
    obj = build("vicreg", lam=1.0, cov_weight=1.0)
    collapsed = obj(torch.zeros(2, 64, 8))
    assert torch.isclose(collapsed["var_loss"], torch.tensor(1 - 1e-2), atol=1e-4)
    white = torch.linalg.qr(torch.randn(256, 8))[0] * 256**0.5
    white = (white - white.mean(0)).expand(2, 256, 8)
    out = obj(white.contiguous())
    assert out["var_loss"] < 1e-2 and out["cov_loss"] < 1e-2


def test_lambda_in_both_conventions() -> None:
    """Child runs log λ (``(1-λ)·inv + λ·reg``) and λ' = λ/(1-λ) (``inv + λ'·reg``, the same
    minimiser; inf at λ = 1); objectives without λ log n/a for both."""
    from jepa_sweeps.tracking import readable_params

    for name in NAMES:
        lams = (0.0, 0.2, 1.0) if has_param(name, "lam") else (None,)
        for lam in lams:
            objective = {"name": name} if lam is None else {"name": name, "lam": lam}
            params = readable_params(trial_config({"objective": objective}))
            expected = "n/a" if lam is None else lam / (1 - lam) if lam < 1 else math.inf
            assert params["lambda"] == ("n/a" if lam is None else lam)
            assert params["lambda_additive"] == expected


def test_unknown_objective_and_out_of_range_params() -> None:
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        build("nope")
    for name in NAMES:
        for param, field in REGISTRY[name].Params.model_fields.items():
            for bound in ("le", "lt"):
                limit = next((getattr(m, bound) for m in field.metadata if hasattr(m, bound)), None)
                if limit is not None:
                    with pytest.raises(ValueError):
                        build(name, **{param: limit + 1})


@pytest.mark.parametrize("name", NAMES)
def test_parameters_an_objective_lacks_are_refused(name: str) -> None:
    """Every other objective's parameter it lacks, and a made-up one: a short message naming the
    key, the value and the objective."""
    others = {p for cls in REGISTRY.values() for p in cls.Params.model_fields if not has_param(name, p)}
    for param in [*sorted(others), "nope"]:
        with pytest.raises(ConfigError) as info:
            trial_config({"objective": {"name": name, param: 0.1}})
        message = str(info.value)
        assert message.startswith(f"objective.{param}=0.1: ") and name in message, message
        assert len(message.splitlines()) <= 3


@pytest.mark.parametrize("name", NAMES)
def test_own_refusals_stop_the_runner_with_exit_2(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """View counts an objective refuses (its ``refuse``) end the CLI with status 2 and its own short
    message before anything is written; those it accepts validate."""
    from jepa_sweeps.run import main

    monkeypatch.setenv("JEPA_SWEEPS_HOME", str(tmp_path / "home"))
    for n_global, n_local in ((1, 0), (1, 1), (2, 0)):
        trial = {"objective": {"name": name}, "views": {"n_global": n_global, "n_local": n_local}}
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"name: refusals\ntrial: {trial}\nnum_samples: 1\n")
        refusal = REGISTRY[name].refuse(TrialConfig.model_construct(views=ViewsConfig(**trial["views"])))
        status = main([str(spec), "--dry-run"])
        err = capsys.readouterr().err
        if refusal is None:
            assert status == 0, err
        else:
            assert status == 2 and len(err.strip().splitlines()) <= 3, err
            assert f"trial.{refusal.key}={refusal.value!r}: {refusal.problem}" in err, err
    assert not (tmp_path / "home").exists()
