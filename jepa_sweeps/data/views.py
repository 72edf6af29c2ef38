"""Batched multi-crop views for joint-embedding SSL, computed on tensors (airbench style).

Per-image PIL pipelines manage ~300 images/s per core here; doing each op once for the whole
batch (one ``grid_sample`` per view, colour ops as broadcast tensor ops) is several times faster
and runs unchanged on a GPU.

Every random number is a counter-based hash of (seed, epoch, dataset index, view, parameter id)
instead of a draw from a generator stream, so an image's views do not depend on the batch,
the worker or the position it lands in: a 2-worker DDP run sees exactly the views of a
single-process run, and a resumed epoch replays the same views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

__all__ = ["NUM_PARAMS", "Augment", "CropGroup", "MultiCrop", "hash_uniforms", "resize_normalise"]

# Parameter ids are fixed, so switching one op off (p=0) leaves every other op's draws unchanged.
NUM_PARAMS = 14
(_AREA, _RATIO, _X, _Y, _FLIP, _JITTER, _BRIGHTNESS, _CONTRAST, _SATURATION, _HUE, _GRAY, _BLUR,
 _SIGMA, _SOLARIZE) = range(NUM_PARAMS)

_MASK = 0xFFFFFFFF
# Odd multipliers below 2**31: a 32-bit value times one stays below 2**63, so the same code is
# exact on Python ints and on int64 tensors (no overflow, no unsigned dtype needed).
_MUL1, _MUL2 = 0x7FEB352D, 0x1B873593
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


def _mix(x):
    """lowbias32-style xorshift-multiply finaliser on values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * _MUL1) & _MASK
    x = x ^ (x >> 15)
    x = (x * _MUL2) & _MASK
    return x ^ (x >> 16)


def _key(*parts: int) -> int:
    """Hash 64-bit integers (negative ones too) into one 32-bit key, order-sensitive."""
    h = 0x9E3779B9
    for part in parts:
        part &= (1 << 64) - 1
        h = _mix(_mix(h ^ (part & _MASK)) ^ (part >> 32))
    return h


def hash_uniforms(seed: int, epoch: int, indices: torch.Tensor, num_views: int,
                  num_params: int = NUM_PARAMS) -> torch.Tensor:
    """Uniforms in [0, 1), shape (num_views, N, num_params), each a pure function of
    (seed, epoch, indices[n], view, param) — independent of N and of the order of ``indices``."""
    keys = torch.tensor([[_key(seed, epoch, v, p) for p in range(num_params)] for v in range(num_views)],
                        dtype=torch.int64, device=indices.device)
    idx = indices.to(torch.int64)
    lo, hi = (idx & _MASK)[None, :, None], ((idx >> 32) & _MASK)[None, :, None]
    h = _mix(_mix(lo ^ keys[:, None, :]) ^ hi)
    return (h >> 8).to(torch.float32) * 2.0**-24  # top 24 bits: exact in float32, never 1.0


def _pair(name: str, value, lo: float, hi: float, lo_open: bool) -> tuple[float, float]:
    """Coerce to a (lo, hi) float pair (YAML gives lists) and check lo <= hi within bounds."""
    pair = tuple(float(v) for v in value)
    ok = len(pair) == 2 and pair[0] <= pair[1] and pair[1] <= hi and (pair[0] > lo if lo_open else pair[0] >= lo)
    if not ok:
        raise ValueError(f"{name}={value!r}: need {lo} {'<' if lo_open else '<='} lo <= hi <= {hi}")
    return pair


@dataclass(frozen=True)
class CropGroup:
    """Views sharing one output size and area range: the global or the local crops."""

    count: int
    size: int
    scale: tuple[float, float]

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError(f"CropGroup.count={self.count}: must be >= 0")
        if self.size < 1:
            raise ValueError(f"CropGroup.size={self.size}: must be >= 1")
        object.__setattr__(self, "scale", _pair("CropGroup.scale", self.scale, 0.0, 1.0, lo_open=True))


@dataclass(frozen=True)
class Augment:
    """Photometric and geometric settings shared by all views (DINO/BYOL defaults)."""

    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio", _pair("Augment.ratio", self.ratio, 0.0, math.inf, lo_open=True))
        object.__setattr__(self, "blur_sigma",
                           _pair("Augment.blur_sigma", self.blur_sigma, 0.0, math.inf, lo_open=True))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_p") and not 0.0 <= value <= 1.0:
                raise ValueError(f"Augment.{f.name}={value}: must be a probability in [0, 1]")
            if f.name in ("brightness", "contrast", "saturation") and value < 0:
                raise ValueError(f"Augment.{f.name}={value}: must be >= 0")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"Augment.hue={self.hue}: must be in [0, 0.5]")


def _hue_basis() -> torch.Tensor:
    """(3, 3, 3) stack of A, B, C with hue_rotation(θ) = A + cos θ·B + sin θ·C in RGB.

    Hue is a rotation by θ = 2π·factor of the chroma plane (I, Q) of YIQ instead of torchvision's
    HSV hue shift: being linear, it folds into the per-sample colour matrix. It turns hues the
    same way and by a similar amount, but keeps luma where HSV keeps max(R, G, B), so pixel values
    differ from torchvision's, most for saturated colours.
    """
    yiq = torch.tensor([_LUMA, (0.596, -0.274, -0.322), (0.211, -0.523, 0.312)], dtype=torch.float64)
    luma, chroma, turn = torch.zeros(3, 3, 3, dtype=torch.float64)
    luma[0, 0] = chroma[1, 1] = chroma[2, 2] = turn[1, 2] = 1
    turn[2, 1] = -1  # this sign turns hues the way torchvision's adjust_hue does
    return (torch.linalg.inv(yiq) @ torch.stack([luma, chroma, turn]) @ yiq).float()


_HUE_BASIS = _hue_basis()


def _normalise(x: torch.Tensor, mean, std, out: torch.Tensor | None = None) -> torch.Tensor:
    """Shared by views and probe inputs so both round identically; writes into ``out`` to save a copy."""
    mean, std = (torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in (mean, std))
    return torch.sub(x, mean, out=out).div_(std)


def _check_images(images: torch.Tensor, mean) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if images.shape[1] != len(mean):
        raise ValueError(f"images have {images.shape[1]} channels but mean/std have {len(mean)}")


def resize_normalise(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """Un-augmented input for probes and kNN: bilinear with half-pixel centres like the views (an
    identity crop equals this), plus antialiasing when downscaling, since probes see each image
    whole and once, so aliasing would only add noise."""
    _check_images(images, mean)
    x = images.float().div_(255)
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=size < h or size < w)
    return _normalise(x, mean, std)


class MultiCrop:
    """V_g global + V_l local RandomResizedCrop-style views with DINO/BYOL photometric ops.

    Crops and flips are one affine ``grid_sample`` per view over the whole batch (bilinear, no
    antialiasing: small local crops of large images alias, which SSL tolerates). Colour ops run
    in a fixed order — brightness, contrast, saturation, hue (all gated by one ``jitter_p`` draw),
    grayscale, Gaussian blur, solarize — each with per-sample probability and factors. Values are
    clamped to [0, 1] after the colour ops; crop, blur and solarize keep them there. Saturation,
    hue and grayscale need RGB and are no-ops for other channel counts (e.g. single-channel digits).
    """

    def __init__(self, global_views: CropGroup, local_views: CropGroup, augment: Augment,
                 mean: tuple[float, ...], std: tuple[float, ...], seed: int) -> None:
        if global_views.count < 1:
            raise ValueError(f"global_views.count={global_views.count}: need at least 1 global view")
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean={mean!r} and std={std!r} must be non-empty and of equal length")
        if any(s <= 0 for s in std):
            raise ValueError(f"std={std!r}: must be > 0")
        self.global_views, self.local_views, self.augment = global_views, local_views, augment
        self.mean, self.std, self.seed = tuple(mean), tuple(std), int(seed)

    @property
    def num_views(self) -> int:
        return self.global_views.count + self.local_views.count

    def __call__(self, images: torch.Tensor, indices: torch.Tensor,
                 epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images uint8 (N, C, H, W); indices int64 (N,) dataset indices → (globals (V_g, N, C, Sg, Sg),
        locals (V_l, N, C, Sl, Sl) or None), float32 normalised, on the images' device."""
        _check_images(images, self.mean)
        if indices.shape != images.shape[:1]:
            raise ValueError(f"indices shape {tuple(indices.shape)} does not match {images.shape[0]} images")
        x = images.float().div_(255)
        u = hash_uniforms(self.seed, epoch, indices.to(images.device), self.num_views)
        out, first = [], 0
        for group in (self.global_views, self.local_views):
            if group.count == 0:
                out.append(None)
                continue
            views = x.new_empty(group.count, *x.shape[:2], group.size, group.size)
            for v in range(group.count):
                self._view(x, u[first + v], group, out=views[v])
            out.append(views)
            first += group.count
        return out[0], out[1]

    def _view(self, x: torch.Tensor, u: torch.Tensor, group: CropGroup, out: torch.Tensor) -> None:
        a = self.augment
        theta = self._crop_theta(u, *x.shape[-2:], group.scale)
        grid = F.affine_grid(theta, [x.shape[0], x.shape[1], group.size, group.size], align_corners=False)
        # "border" clamps like F.interpolate does at the edges, so an identity crop equals a resize.
        y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if a.jitter_p > 0 or (a.grayscale_p > 0 and y.shape[1] == 3):
            y = self._colour(y, u)
        if a.blur_p > 0:
            y = self._blur(y, u)
        if a.solarize_p > 0:
            # On [0, 1], "x >= 0.5 → 1 - x" is min(x, 1 - x), and min(x, 2 - x) = x: no masks.
            top = torch.where(u[:, _SOLARIZE] < a.solarize_p, 1.0, 2.0).view(-1, 1, 1, 1)
            y = torch.minimum(y, top - y)
        _normalise(y, self.mean, self.std, out=out)

    def _crop_theta(self, u: torch.Tensor, height: int, width: int, scale: tuple[float, float]) -> torch.Tensor:
        """RandomResizedCrop box (clamped to the image instead of torchvision's retry loop) and flip
        as the affine map from output to input coordinates in [-1, 1]."""
        lo_r, hi_r = (math.log(r) for r in self.augment.ratio)
        area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, _AREA])
        aspect = torch.exp(lo_r + (hi_r - lo_r) * u[:, _RATIO])
        w = (area * aspect).sqrt().clamp_(max=width)
        h = (area / aspect).sqrt().clamp_(max=height)
        flip = torch.where(u[:, _FLIP] < self.augment.flip_p, -1.0, 1.0)
        theta = u.new_zeros(u.shape[0], 2, 3)
        theta[:, 0, 0] = flip * w / width
        theta[:, 0, 2] = (2 * (width - w) * u[:, _X] + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * (height - h) * u[:, _Y] + h) / height - 1
        return theta

    def _colour(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast, saturation, hue and grayscale are all linear in the pixel (contrast
        up to a per-image offset), so their composition is one per-sample 3×3 matrix M and grey
        offset β: a single pass over the pixels instead of one per op. Unlike torchvision, values
        are clamped once, after the composition, not after each op (only saturated pixels
        differ). Samples whose draw is off get neutral factors: branch-free, no gather/scatter."""
        a = self.augment
        on = u[:, _JITTER] < a.jitter_p

        def factor(param: int, lo: float, hi: float, neutral: float) -> torch.Tensor:
            return torch.where(on, lo + (hi - lo) * u[:, param], neutral)

        def gain(param: int, strength: float) -> torch.Tensor:
            return factor(param, max(0.0, 1 - strength), 1 + strength, 1.0)

        n, c = y.shape[:2]
        scale = gain(_BRIGHTNESS, a.brightness)  # contrast blends b·x with the mean grey of b·x
        offset = torch.zeros_like(scale)
        if a.contrast > 0:
            k = gain(_CONTRAST, a.contrast)
            means = y.mean((2, 3))
            # Elementwise, not a matrix-vector product: gemv rounds differently with the batch size.
            grey = (means * means.new_tensor(_LUMA)).sum(1) if c == 3 else means.mean(1)
            offset, scale = (1 - k) * scale * grey, k * scale
        if c != 3:
            return torch.addcmul(offset.view(n, 1, 1, 1), y, scale.view(n, 1, 1, 1)).clamp_(0, 1)
        luma = y.new_tensor(_LUMA).expand(3, 3)  # rows: x ↦ grey(x) on every channel
        eye = torch.eye(3, device=y.device)
        sat = gain(_SATURATION, a.saturation).view(n, 1, 1)
        m = scale.view(n, 1, 1) * (sat * eye + (1 - sat) * luma)
        if a.hue > 0:
            turn = 2 * math.pi * factor(_HUE, -a.hue, a.hue, 0.0)
            basis = _HUE_BASIS.to(y.device)
            hue = basis[0] + torch.cos(turn).view(n, 1, 1) * basis[1] + torch.sin(turn).view(n, 1, 1) * basis[2]
            m = hue @ m
        gray = (u[:, _GRAY] < a.grayscale_p).view(n, 1, 1)
        m = torch.where(gray, luma @ m, m)
        # Every map above fixes grey (1, 1, 1), so the contrast offset stays a grey offset.
        return torch.baddbmm(offset.view(n, 1, 1), m, y.flatten(2)).view_as(y).clamp_(0, 1)

    def _blur(self, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Gaussian blur as B·y·Bᵀ with a per-sample banded matrix B that folds in the reflect
        padding (identity for samples not blurred). On this CPU two batched matmuls matched or beat
        a depthwise conv with one group per sample from 16 to 224 px, and they need no
        gather/scatter of the selected samples. Kernel ≈ 10% of the side, odd, >= 3 (reflect
        padding caps it below twice the side)."""
        n, c, size = y.shape[0], y.shape[1], y.shape[-1]
        k = min(max(3, 2 * int(0.05 * size) + 1), 2 * size - 1)
        lo, hi = self.augment.blur_sigma
        sigma = lo + (hi - lo) * u[:, _SIGMA]
        taps = torch.arange(k, device=y.device) - k // 2
        g = torch.exp(-taps.square()[None, :] / (2 * sigma.square()[:, None]))
        g = torch.where((u[:, _BLUR] < self.augment.blur_p)[:, None], g / g.sum(1, keepdim=True), taps == 0)
        src = torch.arange(size, device=y.device)[:, None] + taps  # (size, k), reflected into range
        src = torch.where(src < 0, -src, torch.where(src >= size, 2 * (size - 1) - src, src))
        b = y.new_zeros(n, size, size).scatter_add_(2, src.expand(n, size, k), g[:, None, :].expand(n, size, k))
        # Columns on the (N, C·H, W) view need no copy; rows copy B once per channel.
        z = torch.bmm(y.reshape(n, c * size, size), b.transpose(1, 2)).view_as(y)
        return torch.matmul(b[:, None], z)

