"""Mixed precision: objectives under bf16 autocast match fp32, the statistics stay fp32 inside it,
DDP equivalence holds under bf16, the precision is resolved per device, compile falls back to eager."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from jepa_sweeps.config import ConfigError, trial_config
from jepa_sweeps.objectives import REGISTRY, build
from jepa_sweeps.objectives.sigreg import sigreg_statistic
from jepa_sweeps.precision import Precision, compile_module, fp32, resolve
from jepa_sweeps.spec import parse_spec
from tests.distributed_utils import run_distributed
from tests.fake_datasets import write_cifar100

V, N, K = 4, 32, 16  # N is the global batch; each of 2 ranks holds N/2
BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(V, N, K, generator=gen), torch.randn(2, N, K, generator=gen)


def _loss_and_grad(name: str, z: torch.Tensor, target: torch.Tensor, low: bool) -> tuple[float, torch.Tensor]:
    """Loss and input gradient of a freshly built objective (same seed: same layers), in fp32 or
    under bf16 autocast. Objectives that take a teacher's ``target`` get one."""
    torch.manual_seed(0)
    objective = build(name, embed_dim=K)
    z = z.clone().requires_grad_(True)
    extra = {"target": target} if "target" in inspect.signature(objective.forward).parameters else {}
    with BF16 if low else torch.autocast("cpu", enabled=False):
        loss = objective(z, n_global=2, step=7, **extra)["loss"]
    loss.backward()
    return float(loss.detach()), z.grad


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_objective_under_bf16_autocast_matches_fp32(name: str) -> None:
    """Loss and input gradient of every registered objective within 2 % (relative) of fp32."""
    z, target = _inputs()
    loss, grad = _loss_and_grad(name, z, target, low=False)
    loss_bf16, grad_bf16 = _loss_and_grad(name, z, target, low=True)
    assert abs(loss_bf16 - loss) <= 0.02 * abs(loss), (loss_bf16, loss)
    assert _relative(grad_bf16, grad) <= 0.02, _relative(grad_bf16, grad)


class OpDtypes(TorchFunctionMode):
    """Records the dtype of every tensor each torch function returns (matmul, cos, sin, mean...)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype]] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                self.seen.append((getattr(func, "__name__", str(func)), t.dtype))
        return out


def _statistic(fn: Any, x: torch.Tensor) -> tuple[torch.Tensor, OpDtypes]:
    with BF16, OpDtypes() as ops:
        value = fn(x, num_slices=64, step=3)
    return value, ops


def test_sigreg_statistic_inside_autocast_is_the_fp32_statistic() -> None:
    """Equal to the fp32 value to 1e-5 relative, and every internal op (projection, cos, sin, the
    empirical characteristic function) returns fp32 although autocast is on."""
    x = torch.randn(2, 64, K, generator=torch.Generator().manual_seed(1)) * 2
    exact = sigreg_statistic(x, num_slices=64, step=3)
    value, ops = _statistic(sigreg_statistic, x)
    names = {name for name, _ in ops.seen}
    assert {"matmul", "cos", "sin"} <= names or {"__matmul__", "cos", "sin"} <= names, names
    assert all(dtype == torch.float32 for _, dtype in ops.seen), ops.seen
    assert value.dtype == torch.float32
    assert abs(float(value) - float(exact)) <= 1e-5 * abs(float(exact))


def test_without_the_fp32_island_autocast_changes_the_statistic() -> None:
    """The test above can fail: the undecorated statistic runs its projection in bf16 and misses."""
    x = torch.randn(2, 64, K, generator=torch.Generator().manual_seed(1)) * 2
    exact = sigreg_statistic(x, num_slices=64, step=3)
    value, ops = _statistic(sigreg_statistic.__wrapped__, x)
    assert any(dtype == torch.bfloat16 for _, dtype in ops.seen)
    assert abs(float(value) - float(exact)) > 1e-5 * abs(float(exact))


def test_fp32_upcasts_low_precision_arguments_only() -> None:
    @fp32
    def dtypes(*xs: torch.Tensor) -> list[torch.dtype]:
        return [x.dtype for x in xs] + [(xs[0] @ xs[0].T).dtype]

    with BF16:
        assert dtypes(torch.ones(2, 2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.float16)) == [torch.float32] * 3
        assert dtypes(torch.ones(2, 2, dtype=torch.float64))[0] == torch.float64


def test_ema_update_inside_autocast_is_the_fp32_update() -> None:
    """A step of (1−m) = 1e-4 survives (it would be below bf16's resolution of the weights)."""
    from jepa_sweeps.objectives.ema import ema_update

    teacher, student = _linear(), _linear()
    with torch.no_grad():
        student.weight.add_(1.0)
    expected = teacher.weight.detach() + 1e-4 * (student.weight.detach() - teacher.weight.detach())
    with BF16:
        ema_update(teacher, student, 1 - 1e-4)
    assert teacher.weight.dtype == torch.float32
    assert torch.allclose(teacher.weight, expected, rtol=0, atol=1e-7)


def _bf16_on_rank(rank: int, world: int) -> dict[str, tuple[float, torch.Tensor]]:
    z, target = _inputs()
    part = slice(rank * N // world, (rank + 1) * N // world)
    return {name: _loss_and_grad(name, z[:, part], target[:, part], low=True) for name in REGISTRY}


@pytest.fixture(scope="module")
def bf16_ranks() -> list[dict[str, tuple[float, torch.Tensor]]]:
    return run_distributed(_bf16_on_rank)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_ddp_under_bf16_matches_one_process(name: str, bf16_ranks: list) -> None:
    """2 gloo ranks under bf16, each on half the batch: the mean of their losses and their input
    gradients ÷ world size equal one bf16 process on the whole batch (within the 2 % of bf16)."""
    z, target = _inputs()
    loss, grad = _loss_and_grad(name, z, target, low=True)
    mean_loss = sum(r[name][0] for r in bf16_ranks) / len(bf16_ranks)
    rank_grads = torch.cat([r[name][1] for r in bf16_ranks], dim=1) / len(bf16_ranks)
    assert abs(mean_loss - loss) <= 0.02 * abs(loss), (mean_loss, loss)
    assert _relative(rank_grads, grad) <= 0.02, _relative(rank_grads, grad)


def test_precision_resolves_per_device_and_is_validated() -> None:
    assert resolve("auto", "cuda") == "bf16" and resolve("auto", "cpu") == "fp32"
    assert resolve("fp16", "cpu") == "fp16"
    assert trial_config({}).optim.precision == "auto"
    with pytest.raises(ConfigError, match=r"optim.precision='fp8': unknown; choose among auto, fp32, bf16, fp16"):
        trial_config({"optim": {"precision": "fp8"}})
    cpu = Precision("auto", torch.device("cpu"))
    assert cpu.name == "fp32" and not cpu.scaler.is_enabled() and cpu.state_dict() == {}
    half = Precision("fp16", torch.device("cpu"))
    assert half.scaler.is_enabled() and "scale" in half.state_dict()


def test_fp16_scaler_state_round_trips() -> None:
    """What a checkpoint keeps of an fp16 trial's scaler restores the same scaler (scale, tracker)."""
    model = _linear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    half = Precision("fp16", torch.device("cpu"))
    for _ in range(3):
        with half.autocast():
            loss = model(torch.randn(8, 4)).square().mean()
        half.backward_step(loss, optimizer)
    state = half.state_dict()
    restored = Precision("fp16", torch.device("cpu"))
    restored.load_state_dict(state)
    assert restored.state_dict() == state and state["scale"] < 2.0**16  # moved off its initial scale


def test_sweep_resolves_auto_by_its_workers_device() -> None:
    gpu = parse_spec({"name": "g", "resources": {"gpus_per_worker": 1}})
    cpu = parse_spec({"name": "c"})
    fixed = parse_spec({"name": "f", "resources": {"gpus_per_worker": 1}, "trial": {"optim": {"precision": "fp32"}}})
    from jepa_sweeps.tracking import readable_params

    assert gpu.trial_for({}).optim.precision == "bf16"
    assert readable_params(gpu.trial_for({}))["optim.precision"] == "bf16"  # the MLflow parameter
    assert cpu.trial_for({}).optim.precision == "fp32"
    assert fixed.trial_for({}).optim.precision == "fp32"


def test_gpu_spec_dry_run_shows_its_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    from jepa_sweeps.run import main

    monkeypatch.setenv("JEPA_SWEEPS_HOME", str(tmp_path / "home"))
    spec = Path(__file__).resolve().parents[1] / "search_spaces" / "cifar100_vit_nano.yaml"
    data = write_cifar100(tmp_path / "cifar100")
    assert main([str(spec), "--dry-run", "--set", f"trial.data.path={data}"]) == 0
    out = capsys.readouterr().out
    assert "precision bf16, compile off" in out and "+ 1.0 GPU" in out
    assert not (tmp_path / "home").exists()


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def _exploding_backend(graph: Any, inputs: Any) -> Any:
    raise RuntimeError("no C compiler on this node")


@pytest.mark.parametrize(
    "options",
    [{"backend": "no_such_backend"}, {"mode": "no_such_mode"}, {"backend": _exploding_backend}],
    ids=["invalid-backend", "invalid-mode", "failing-backend"],
)
def test_compile_failure_falls_back_to_eager_with_one_warning(options: dict, capfd: Any) -> None:
    """Failing when asked (invalid backend/mode) or at the first call (a backend that raises):
    one warning line, then the eager module, same outputs and the same state_dict keys."""
    eager, compiled = _linear(), _linear()
    compile_module(compiled, **options)
    x = torch.randn(5, 4)
    for _ in range(2):
        assert torch.equal(compiled(x), eager(x))
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: torch.compile failed"), err
    assert list(compiled.state_dict()) == list(eager.state_dict())


@pytest.mark.slow
def test_trial_with_compile_trains_eagerly_when_the_compiler_is_missing(capfd: Any) -> None:
    """``compile: true`` on a node whose C++ compiler is gone (inductor's configured ``cxx``): the
    compile fails at the first step, the trial says so in one line and finishes in eager mode."""
    import torch._inductor.config as inductor

    from jepa_sweeps.train import train

    cfg = trial_config({
        "epochs": 1, "compile": True, "optim": {"batch_size": 256, "warmup_epochs": 0},
        "encoder": {"name": "cnn", "width": 4}, "views": {"n_global": 2, "n_local": 0},
        "projector": {"hidden_dim": 16, "out_dim": 8}, "objective": {"name": "sigreg", "num_slices": 8},
        "eval": {"final_probe_epochs": 0, "val_batches": 1},
    })
    with inductor.patch({"cpp.cxx": (None, "/nonexistent/g++")}):
        final = train(cfg)
    assert final["epoch"] == 1 and final["diverged"] == 0.0 and 0.0 <= final["knn_acc"] <= 1.0
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: torch.compile failed (InvalidCxxCompiler"), lines
