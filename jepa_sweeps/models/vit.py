"""Vision Transformer with a CLS token and axial 2D rotary position embeddings.

Positions enter only through RoPE (no learned absolute embedding table), so one model embeds
global crops, smaller local crops and images at twice the training resolution — any size whose
sides are multiples of the patch size. Whether attention actually extrapolates to unseen grid
sizes is an experimental question (it did not in the CIFAR-100 reproduction); the model must at
least be able to ask it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(patch_size=2, dim=64, depth=4, heads=4),  # digits: 8×8 or 16×16 inputs
    "small": dict(patch_size=4, dim=192, depth=6, heads=3),
    "nano": dict(patch_size=4, dim=512, depth=6, heads=8),  # the CIFAR-100 32×32 reproduction
}


def rope_2d(
    rows: torch.Tensor, cols: torch.Tensor, head_dim: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles of tokens at (rows[t], cols[t]), each of shape (T, 2, head_dim // 4).

    Axial 2D RoPE: the first half of a head's channels turns with the row index, the second
    half with the column index, each at the 1D frequencies ``base ** (-2i / (head_dim / 2))``.
    Since a rotation by p then -q is one by p - q, the score q·k then depends on the two
    tokens' relative offset only. ``rows`` and ``cols`` are float tensors (T,).
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = base ** (-torch.arange(quarter, dtype=rows.dtype, device=rows.device) / quarter)
    angles = torch.stack([rows, cols], dim=-1)[..., None] * freqs  # (T, 2, quarter)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., T, head_dim) by the angles from ``rope_2d``.

    Within each axis half, channel j is paired with channel j + head_dim // 4 and the pair is
    rotated as one complex number.
    """
    a, b = x.unflatten(-1, (2, 2, -1)).unbind(-2)  # each (..., T, 2 axes, head_dim // 4)
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-2).flatten(-3)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, return_attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if return_attention:
            # Explicit softmax only when the maps are wanted: the fused kernel never materialises them.
            attn = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)
            out = attn @ v
        else:
            attn = None
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, d)), attn


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, return_attention: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, attn = self.attn(self.norm1(x), cos, sin, return_attention)
        x = x + out
        return x + self.mlp(self.norm2(x)), attn


class ViT(nn.Module):
    """Patch embedding → CLS + patch tokens → pre-LN blocks with 2D RoPE → LayerNorm.

    The embedding is the normalised CLS token. The CLS token is never rotated: it has no
    position of its own, unlike the patches.
    """

    def __init__(
        self, in_channels: int, patch_size: int, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if (dim // heads) % 4:
            raise ValueError(f"2D RoPE needs a head dim (dim / heads = {dim // heads}) divisible by 4")
        self.patch_size = patch_size
        self.embed_dim = dim
        self.heads = heads
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-0.04, b=0.04)

    def _rope(self, grid_h: int, grid_w: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(grid_h, device=like.device, dtype=torch.float32).repeat_interleave(grid_w)
        cols = torch.arange(grid_w, device=like.device, dtype=torch.float32).repeat(grid_h)
        cos, sin = rope_2d(rows, cols, self.embed_dim // self.heads)
        # Token 0 is the CLS token: angle 0, so it is never rotated.
        cos = torch.cat([torch.ones_like(cos[:1]), cos]).to(like.dtype)
        sin = torch.cat([torch.zeros_like(sin[:1]), sin]).to(like.dtype)
        return cos, sin

    def _encode(self, x: torch.Tensor, return_attention: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input size {h}×{w} is not divisible by the patch size {p}")
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, h/p · w/p, dim), row-major
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), patches], dim=1)
        cos, sin = self._rope(h // p, w // p, tokens)
        maps = []
        for block in self.blocks:
            tokens, attn = block(tokens, cos, sin, return_attention)
            if attn is not None:
                maps.append(attn)
        return self.norm(tokens), maps

    def forward(
        self, x: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """(N, dim) embedding; with ``return_attention`` also one (N, heads, T, T) map per layer (token 0 = CLS)."""
        tokens, maps = self._encode(x, return_attention)
        return (tokens[:, 0], maps) if return_attention else tokens[:, 0]

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final-norm patch features (N, num_patches, dim) in row-major order, e.g. for PCA images."""
        return self._encode(x, False)[0][:, 1:]


def vit(preset: str, in_channels: int, **overrides: Any) -> ViT:
    """A ``ViT`` from a named preset; ``overrides`` (patch_size, dim, depth, heads, mlp_ratio) win."""
    if preset not in PRESETS:
        raise ValueError(f"unknown ViT preset {preset!r}; known presets: {', '.join(PRESETS)}")
    return ViT(in_channels, **{**PRESETS[preset], **overrides})
