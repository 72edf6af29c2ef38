from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

import jepa_sweeps.models.norm as norm_module
from jepa_sweeps.models import (
    ENCODERS,
    GlobalBatchNorm,
    Projector,
    SmallCNN,
    build_encoder,
    resnet18,
    supports_attention,
    vit,
)
from jepa_sweeps.models.vit import PRESETS, apply_rope, rope_2d
from tests.distributed_utils import run_distributed


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- encoders: shapes at several input sizes -------------------------------------------------


@pytest.mark.parametrize("size", [4, 8, 16])
def test_cnn_shapes(size: int) -> None:
    model = SmallCNN(1, width=8)
    assert model.embed_dim == 32
    assert model(torch.randn(3, 1, size, size)).shape == (3, 32)


@pytest.mark.parametrize("size", [8, 32])
def test_resnet18_shapes(size: int) -> None:
    model = resnet18(3, width=8)
    assert model.embed_dim == 64
    assert model(torch.randn(2, 3, size, size)).shape == (2, 64)


def test_resnet18_default_width() -> None:
    assert resnet18(3).embed_dim == 512


@pytest.mark.parametrize("size", [8, 16, 32])  # 16 → 32 is evaluation at 2× the training resolution
def test_vit_tiny_shapes(size: int) -> None:
    model = vit("tiny", 1)
    x = torch.randn(2, 1, size, size)
    assert model(x).shape == (2, 64)
    assert model.patch_tokens(x).shape == (2, (size // 2) ** 2, 64)


def test_vit_nano_at_training_and_double_resolution() -> None:
    model = vit("nano", 3, depth=1)
    for size in (32, 64):
        assert model(torch.randn(2, 3, size, size)).shape == (2, 512)


def test_vit_non_square_and_local_crop_sizes() -> None:
    model = vit("tiny", 3)
    assert model(torch.randn(2, 3, 4, 12)).shape == (2, 64)


def test_vit_rejects_size_not_divisible_by_patch() -> None:
    with pytest.raises(ValueError, match="not divisible by the patch size 2"):
        vit("tiny", 1)(torch.randn(2, 1, 7, 8))


def test_vit_rejects_head_dim_not_divisible_by_4() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        vit("tiny", 1, dim=24, heads=4)


def test_projector() -> None:
    assert Projector(32, hidden_dim=16, out_dim=8)(torch.randn(5, 32)).shape == (5, 8)
    single = Projector(32, out_dim=8, num_layers=1)
    assert [type(m) for m in single.net] == [nn.Linear]
    with pytest.raises(ValueError, match="num_layers"):
        Projector(32, num_layers=0)


# --- ViT attention and RoPE ------------------------------------------------------------------


def test_vit_sdpa_path_matches_explicit_attention() -> None:
    model = vit("tiny", 1, depth=3)
    x = torch.randn(4, 1, 8, 8)
    fast = model(x)
    emb, maps = model(x, return_attention=True)
    torch.testing.assert_close(emb, fast, atol=1e-5, rtol=1e-5)
    assert len(maps) == 3
    tokens = 1 + (8 // 2) ** 2
    for attn in maps:
        assert attn.shape == (4, 4, tokens, tokens)
        torch.testing.assert_close(attn.sum(-1), torch.ones(4, 4, tokens))


def _scores(q: torch.Tensor, k: torch.Tensor, pos_q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor:
    """q·k after rotating q to positions pos_q and k to pos_k, each pos (T, 2) = (row, col)."""
    cos_q, sin_q = rope_2d(pos_q[:, 0], pos_q[:, 1], q.shape[-1])
    cos_k, sin_k = rope_2d(pos_k[:, 0], pos_k[:, 1], k.shape[-1])
    return (apply_rope(q, cos_q, sin_q) * apply_rope(k, cos_k, sin_k)).sum(-1)


def test_rope_score_depends_only_on_relative_position() -> None:
    head_dim, t = 16, 10
    q, k = torch.randn(2, t, head_dim, dtype=torch.float64).unbind(0)
    pos_q = torch.randint(0, 8, (t, 2)).double()
    pos_k = torch.randint(0, 8, (t, 2)).double()
    shift = torch.tensor([3.0, -5.0], dtype=torch.float64)  # rows and columns shift differently
    torch.testing.assert_close(_scores(q, k, pos_q, pos_k), _scores(q, k, pos_q + shift, pos_k + shift))
    # Not vacuous: a shift of one token only changes the scores, on either axis.
    for axis in range(2):
        moved = pos_k.clone()
        moved[:, axis] += 1
        assert not torch.allclose(_scores(q, k, pos_q, pos_k), _scores(q, k, pos_q, moved))


def test_rope_rotates_first_half_by_row_and_second_half_by_column() -> None:
    x = torch.randn(1, 16, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    five = torch.full((1,), 5.0, dtype=torch.float64)
    by_row = apply_rope(x, *rope_2d(five, zero, 16))
    by_col = apply_rope(x, *rope_2d(zero, five, 16))
    torch.testing.assert_close(by_row[:, 8:], x[:, 8:])
    torch.testing.assert_close(by_col[:, :8], x[:, :8])
    assert not torch.allclose(by_row[:, :8], x[:, :8])
    torch.testing.assert_close(by_row.norm(), x.norm())  # a rotation


# --- GlobalBatchNorm in one process == nn.BatchNorm --------------------------------------------


@pytest.mark.parametrize("shape", [(16, 6), (8, 6, 5, 5)])
def test_global_batchnorm_matches_batchnorm(shape: tuple[int, ...]) -> None:
    ref = (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(6)
    ours = GlobalBatchNorm(6)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
    ours.load_state_dict({k: v for k, v in ref.state_dict().items() if k != "num_batches_tracked"})

    for _ in range(3):  # several steps so running statistics accumulate
        x = torch.randn(shape) * 2 + 0.5
        w = torch.randn(shape)
        x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ref, y_ours = ref(x_ref), ours(x_ours)
        (y_ref * w).sum().backward()
        (y_ours * w).sum().backward()
        torch.testing.assert_close(y_ours, y_ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-6, rtol=1e-6)

    ref.eval(), ours.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-6)


def test_global_batchnorm_rejects_single_value_per_channel() -> None:
    with pytest.raises(ValueError, match="more than one value"):
        GlobalBatchNorm(4)(torch.randn(1, 4))


# --- GlobalBatchNorm across 2 gloo processes == one process on the global batch ---------------


def _plain_all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Right forward, local-only backward: what a non-autograd all_reduce gives."""
    total = x.detach().clone()
    dist.all_reduce(total)
    return x + (total - x.detach())


def _bn_on_shard(rank: int, world: int, x: torch.Tensor, w: torch.Tensor, state: dict) -> dict[str, torch.Tensor]:
    bn = GlobalBatchNorm(x.shape[1]).double()
    bn.load_state_dict(state)
    shard = x.chunk(world)[rank].clone().requires_grad_()
    y = bn(shard)
    # Rank losses sum to the single-process loss sum(w · y), so each rank's gradient is exactly
    # the single-process gradient of its shard (DDP would average: that is only a constant factor).
    (y * w.chunk(world)[rank]).sum().backward()
    bn.eval()
    return dict(
        y=y.detach(),
        grad=shard.grad,
        weight_grad=bn.weight.grad,
        bias_grad=bn.bias.grad,
        running_mean=bn.running_mean,
        running_var=bn.running_var,
        eval_y=bn(shard.detach()),
    )


def _gbn_worker(rank: int, world: int, x: torch.Tensor, w: torch.Tensor, state: dict) -> dict:
    result = {"autograd": _bn_on_shard(rank, world, x, w, state)}
    correct, norm_module.all_reduce_sum = norm_module.all_reduce_sum, _plain_all_reduce_sum
    try:
        result["plain"] = _bn_on_shard(rank, world, x, w, state)
    finally:
        norm_module.all_reduce_sum = correct
    return result


def test_global_batchnorm_two_processes_equal_one_process_on_global_batch() -> None:
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64) * 2 + 1
    w = torch.randn_like(x)
    ref = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.normal_()
    state = {k: v.clone() for k, v in ref.state_dict().items() if k != "num_batches_tracked"}
    x_ref = x.clone().requires_grad_()
    y_ref = ref(x_ref)
    (y_ref * w).sum().backward()
    ref.eval()

    ranks = run_distributed(_gbn_worker, x, w, state, world_size=2)
    good = [r["autograd"] for r in ranks]
    torch.testing.assert_close(torch.cat([r["y"] for r in good]), y_ref.detach())
    torch.testing.assert_close(torch.cat([r["grad"] for r in good]), x_ref.grad)
    torch.testing.assert_close(sum(r["weight_grad"] for r in good), ref.weight.grad)
    torch.testing.assert_close(sum(r["bias_grad"] for r in good), ref.bias.grad)
    for r in good:
        torch.testing.assert_close(r["running_mean"], ref.running_mean)
        torch.testing.assert_close(r["running_var"], ref.running_var)
    torch.testing.assert_close(torch.cat([r["eval_y"] for r in good]), ref(x))

    # The check has teeth: a non-autograd reduction gives the same outputs but drops the other
    # rank's share of the gradient through the shared mean and variance.
    plain = [r["plain"] for r in ranks]
    torch.testing.assert_close(torch.cat([r["y"] for r in plain]), y_ref.detach())
    assert not torch.allclose(torch.cat([r["grad"] for r in plain]), x_ref.grad, atol=1e-3)


# --- registry --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [("cnn", {"width": 4}), ("resnet18", {"width": 4}), ("vit", {"preset": "tiny", "depth": 1})],
)
def test_build_encoder(name: str, params: dict) -> None:
    model = build_encoder(name, 3, **params)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, model.embed_dim)
    assert supports_attention(model) == (name == "vit")


def test_build_encoder_vit_overrides_and_default_preset() -> None:
    model = build_encoder("vit", 1, preset="small", dim=48, depth=1)
    assert (model.embed_dim, model.patch_size, len(model.blocks)) == (48, PRESETS["small"]["patch_size"], 1)
    assert build_encoder("vit", 1).embed_dim == PRESETS["tiny"]["dim"]


def test_build_encoder_errors() -> None:
    assert ENCODERS == ("cnn", "resnet18", "vit")
    with pytest.raises(ValueError, match=r"'convnext'.*cnn, resnet18, vit"):
        build_encoder("convnext", 3)
    with pytest.raises(ValueError, match=r"'huge'.*tiny, small, nano"):
        build_encoder("vit", 3, preset="huge")
