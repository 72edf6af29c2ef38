"""Encoder registry: the trial config names an encoder, this builds it.

Every encoder maps images (N, C, H, W) to embeddings (N, embed_dim) and exposes ``embed_dim`` so
the projector and probes can be sized without a dummy forward pass.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from jepa_sweeps.models.cnn import SmallCNN
from jepa_sweeps.models.norm import GlobalBatchNorm
from jepa_sweeps.models.projector import Projector
from jepa_sweeps.models.resnet import resnet18
from jepa_sweeps.models.vit import ViT, vit


def _build_vit(in_channels: int, preset: str = "tiny", **overrides: Any) -> ViT:
    return vit(preset, in_channels, **overrides)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "cnn": SmallCNN,
    "resnet18": resnet18,
    "vit": _build_vit,
}
ENCODERS: tuple[str, ...] = tuple(_BUILDERS)


def build_encoder(name: str, in_channels: int, **params: Any) -> nn.Module:
    """Build encoder ``name``; ``params`` go to its constructor (for ``vit``: ``preset`` plus overrides)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(ENCODERS)}")
    return _BUILDERS[name](in_channels, **params)


def supports_attention(model: nn.Module) -> bool:
    """Whether ``model(x, return_attention=True)`` yields attention maps."""
    return isinstance(model, ViT)


__all__ = [
    "ENCODERS",
    "GlobalBatchNorm",
    "Projector",
    "SmallCNN",
    "ViT",
    "build_encoder",
    "resnet18",
    "supports_attention",
    "vit",
]
