"""Batched multi-crop: determinism independent of batching, op semantics, hash quality, validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jepa_sweeps.data.views import (
    NUM_PARAMS,
    Augment,
    CropGroup,
    MultiCrop,
    hash_uniforms,
    resize_normalise,
)

MEAN3, STD3 = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
OFF = dict(flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0, solarize_p=0.0)


def _norm(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN3).view(1, 3, 1, 1)) / torch.tensor(STD3).view(1, 3, 1, 1)


def _unnorm(v: torch.Tensor) -> torch.Tensor:
    return v * torch.tensor(STD3).view(1, 3, 1, 1) + torch.tensor(MEAN3).view(1, 3, 1, 1)


def _images(n: int, c: int = 3, side: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, c, side, side), generator=g, dtype=torch.uint8)
    return images, torch.arange(1000, 1000 + n)


def _multicrop(c: int = 3, g: int = 32, l: int = 16, n_local: int = 3, seed: int = 0, **augment) -> MultiCrop:
    mean, std = (MEAN3, STD3) if c == 3 else ((0.5,) * c, (0.3,) * c)
    return MultiCrop(CropGroup(2, g, (0.3, 1.0)), CropGroup(n_local, l, (0.05, 0.3)), Augment(**augment),
                     mean, std, seed)


def _identity(size: int, c: int = 3, **augment) -> MultiCrop:
    mean, std = (MEAN3, STD3) if c == 3 else ((0.5,), (0.3,))
    group = CropGroup(1, size, (1.0, 1.0))
    return MultiCrop(group, group, Augment(ratio=(1.0, 1.0), **{**OFF, **augment}), mean, std, seed=3)


def test_shapes_dtypes_and_no_locals():
    images, idx = _images(5)
    g, l = _multicrop(n_local=3)(images, idx, epoch=0)
    assert g.shape == (2, 5, 3, 32, 32) and l.shape == (3, 5, 3, 16, 16)
    assert g.dtype == l.dtype == torch.float32 and g.device == images.device
    g0, none = _multicrop(n_local=0)(images, idx, epoch=0)
    assert none is None and torch.equal(g0, g)  # the local group does not shift the global draws


@pytest.mark.parametrize("c, side, g, l", [(3, 32, 32, 16), (3, 48, 48, 24), (1, 8, 8, 4)])
def test_batch_split_and_permutation_invariance(c, side, g, l):
    images, idx = _images(24, c, side)
    mc = _multicrop(c, g, l, blur_p=0.7, solarize_p=0.5)
    full = mc(images, idx, epoch=2)
    halves = [mc(images[s], idx[s], epoch=2) for s in (slice(0, 11), slice(11, None))]
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(1))
    permuted = mc(images[perm], idx[perm], epoch=2)
    for k in range(2):
        assert torch.equal(torch.cat([h[k] for h in halves], dim=1), full[k])
        assert torch.equal(permuted[k], full[k][:, perm])


def test_same_key_same_views_and_other_keys_differ():
    images, idx = _images(16)
    base = _multicrop(seed=7)(images, idx, epoch=1)[0]
    again = _multicrop(seed=7)(images, idx, epoch=1)[0]
    assert torch.equal(base, again)
    # one image in a different batch, at a different position, keeps its views
    alone = _multicrop(seed=7)(images[5:6], idx[5:6], epoch=1)[0]
    assert torch.equal(alone[:, 0], base[:, 5])
    for other in (_multicrop(seed=7)(images, idx, epoch=2)[0], _multicrop(seed=8)(images, idx, epoch=1)[0]):
        differs = (other != base).flatten(2).any(2)  # (V, N)
        assert differs.all()
    # views of one image differ from each other
    assert not torch.equal(base[0], base[1])


@pytest.mark.parametrize("c, side, size", [(3, 32, 32), (1, 8, 8), (1, 8, 16), (3, 20, 32)])
def test_identity_augment_equals_resize_normalise(c, side, size):
    images, idx = _images(6, c, side)
    mc = _identity(size, c)
    g, l = mc(images, idx, epoch=0)
    expected = resize_normalise(images, size, mc.mean, mc.std)
    torch.testing.assert_close(g[0], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(l[0], expected, atol=1e-5, rtol=0)


def test_flip_mirrors_exactly():
    images, idx = _images(6)
    mc = _identity(32, flip_p=1.0)
    g, _ = mc(images, idx, epoch=0)
    torch.testing.assert_close(g[0], resize_normalise(images.flip(-1), 32, mc.mean, mc.std), atol=1e-6, rtol=0)


def test_solarize_formula():
    images, idx = _images(6)
    mc = _identity(32, solarize_p=1.0)
    x = images.float() / 255
    expected = _norm(torch.where(x >= 0.5, 1 - x, x))
    torch.testing.assert_close(mc(images, idx, epoch=0)[0][0], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("side, k", [(32, 3), (64, 7)])
def test_blur_matches_reflect_padded_gaussian_conv(side, k):
    images, idx = _images(4, 3, side)
    mc = _identity(side, blur_p=1.0, blur_sigma=(1.3, 1.3))
    taps = torch.arange(k) - k // 2
    w = torch.exp(-taps.float().square() / (2 * 1.3**2))
    w = w / w.sum()
    x = F.pad(images.float() / 255, (k // 2,) * 4, mode="reflect")
    x = F.conv2d(x, w.view(1, 1, 1, k).expand(3, 1, 1, k), groups=3)
    x = F.conv2d(x, w.view(1, 1, k, 1).expand(3, 1, k, 1), groups=3)
    torch.testing.assert_close(mc(images, idx, epoch=0)[0][0], _norm(x), atol=1e-5, rtol=0)


def test_colour_jitter_matches_sequential_ops():
    """Fused colour matrix = brightness → contrast → saturation → YIQ hue rotation, one by one,
    on images whose values never leave [0, 1] (so clamping plays no part)."""
    from jepa_sweeps.data import views

    images = torch.randint(100, 150, (16, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    idx = torch.arange(16)
    strengths = dict(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1)
    mc = _identity(32, jitter_p=0.5, **strengths)
    got = _unnorm(mc(images, idx, epoch=4)[0][0])

    u = hash_uniforms(mc.seed, 4, idx, mc.num_views)[0]
    on = (u[:, views._JITTER] < 0.5).view(-1, 1, 1, 1)
    pick = lambda p, lo, hi, neutral: torch.where(on, (lo + (hi - lo) * u[:, p]).view(-1, 1, 1, 1), neutral)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = lambda x: (x * luma).sum(1, keepdim=True)
    x = images.float() / 255
    x = x * pick(views._BRIGHTNESS, 0.8, 1.2, 1.0)
    c = pick(views._CONTRAST, 0.8, 1.2, 1.0)
    x = c * x + (1 - c) * grey(x).mean((2, 3), keepdim=True)
    s = pick(views._SATURATION, 0.8, 1.2, 1.0)
    x = s * x + (1 - s) * grey(x)
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    y, i, q = torch.einsum("ij,njhw->nihw", yiq, x).unbind(1)
    angle = 2 * math.pi * pick(views._HUE, -0.1, 0.1, 0.0)[:, 0]
    i, q = i * angle.cos() + q * angle.sin(), q * angle.cos() - i * angle.sin()
    expected = torch.einsum("ij,njhw->nihw", torch.linalg.inv(yiq), torch.stack([y, i, q], 1))
    assert 0 < on.sum() < 16
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)


def test_hue_turns_the_way_torchvision_does():
    from torchvision.transforms.v2.functional import adjust_hue

    from jepa_sweeps.data import views

    images, idx = _images(64, side=8)
    mc = _identity(8, jitter_p=1.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.15)
    got = _unnorm(mc(images, idx, epoch=0)[0][0])
    factors = -0.15 + 0.3 * hash_uniforms(mc.seed, 0, idx, mc.num_views)[0, :, views._HUE]
    x = images.float() / 255
    same = torch.stack([adjust_hue(x[i], f.item()) for i, f in enumerate(factors)])
    opposite = torch.stack([adjust_hue(x[i], -f.item()) for i, f in enumerate(factors)])
    assert (got - same).abs().mean() < 0.6 * (got - opposite).abs().mean()


def test_grayscale_makes_channels_equal():
    images, idx = _images(6)
    group = CropGroup(2, 32, (0.3, 1.0))
    mc = MultiCrop(group, group, Augment(grayscale_p=1.0), (0.5,) * 3, (0.25,) * 3, seed=0)
    g, _ = mc(images, idx, epoch=0)
    torch.testing.assert_close(g[:, :, 0], g[:, :, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(g[:, :, 0], g[:, :, 2], atol=1e-5, rtol=0)


def test_single_channel_digits_with_tiny_local_views():
    images, idx = _images(10, c=1, side=8)
    mc = _multicrop(c=1, g=8, l=4, n_local=6, jitter_p=1.0, grayscale_p=1.0, blur_p=1.0, solarize_p=1.0)
    g, l = mc(images, idx, epoch=0)
    assert g.shape == (2, 10, 1, 8, 8) and l.shape == (6, 10, 1, 4, 4)
    for v in (g, l):
        x = v * 0.3 + 0.5  # back to [0, 1]
        assert torch.isfinite(v).all() and x.min() >= -1e-6 and x.max() <= 1 + 1e-6
    one = _multicrop(c=1, g=1, l=1, n_local=1, blur_p=1.0)(images, idx, epoch=0)  # 1-pixel views
    assert one[0].shape == (2, 10, 1, 1, 1)


def test_hash_uniform_statistics():
    u = hash_uniforms(seed=12345, epoch=3, indices=torch.arange(100_000), num_views=2)
    assert u.shape == (2, 100_000, NUM_PARAMS) and u.dtype == torch.float32
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 2e-3
    hist = torch.histc(u.flatten(), bins=32, min=0, max=1)
    expected = u.numel() / 32
    chi2 = ((hist - expected) ** 2 / expected).sum().item()
    assert chi2 < 70  # 31 dof: p ≈ 1e-4
    cols = u.permute(1, 0, 2).reshape(100_000, -1)  # every (view, param) as one variable
    corr = torch.corrcoef(cols.T)
    assert (corr - torch.eye(corr.shape[0])).abs().max() < 0.02
    serial = torch.corrcoef(torch.stack([u[0, :-1, 0], u[0, 1:, 0]]))[0, 1]
    assert abs(serial) < 0.02
    # the high 32 bits of an index matter, and negative indices are valid keys
    far = hash_uniforms(1, 0, torch.tensor([5, 5 + 2**32, -5]), 1)
    assert not torch.equal(far[0, 0], far[0, 1]) and not torch.equal(far[0, 0], far[0, 2])


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: CropGroup(-1, 8, (0.3, 1.0)), "count"),
        (lambda: CropGroup(1, 0, (0.3, 1.0)), "size"),
        (lambda: CropGroup(1, 8, (0.0, 1.0)), "scale"),
        (lambda: CropGroup(1, 8, (0.6, 0.5)), "scale"),
        (lambda: CropGroup(1, 8, (0.5, 1.5)), "scale"),
        (lambda: Augment(flip_p=1.5), "flip_p"),
        (lambda: Augment(blur_p=-0.1), "blur_p"),
        (lambda: Augment(ratio=(2.0, 1.0)), "ratio"),
        (lambda: Augment(blur_sigma=(0.0, 1.0)), "blur_sigma"),
        (lambda: Augment(hue=0.6), "hue"),
        (lambda: Augment(contrast=-0.1), "contrast"),
        (lambda: MultiCrop(CropGroup(0, 8, (0.3, 1.0)), CropGroup(0, 4, (0.1, 0.3)), Augment(), (0.5,), (0.3,), 0),
         "global_views.count"),
        (lambda: MultiCrop(CropGroup(1, 8, (0.3, 1.0)), CropGroup(0, 4, (0.1, 0.3)), Augment(), (0.5,), (0.0,), 0),
         "std"),
    ],
)
def test_validation_names_field(build, field):
    with pytest.raises(ValueError, match=field):
        build()


def test_bad_inputs_rejected():
    mc = _multicrop()
    images, idx = _images(4)
    with pytest.raises(ValueError, match="uint8"):
        mc(images.float(), idx, epoch=0)
    with pytest.raises(ValueError, match="channels"):
        mc(images[:, :1], idx, epoch=0)
    with pytest.raises(ValueError, match="indices"):
        mc(images, idx[:3], epoch=0)
