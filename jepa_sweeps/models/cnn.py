"""A small CNN for 8×8 digits: cheap enough for a 2-core trial, big enough to show the λ trade-off."""

from __future__ import annotations

import torch
from torch import nn

from jepa_sweeps.models.norm import GlobalBatchNorm


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    # No conv bias: the norm's shift makes it redundant.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        GlobalBatchNorm(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Three 3×3 conv blocks (one strided) and global average pooling.

    Pooling instead of flattening lets the same weights embed global crops, smaller local crops
    and up-scaled images alike.
    """

    def __init__(self, in_channels: int, width: int = 32) -> None:
        super().__init__()
        self.embed_dim = 4 * width
        self.features = nn.Sequential(
            conv_bn_relu(in_channels, width),
            conv_bn_relu(width, 2 * width, stride=2),
            conv_bn_relu(2 * width, 4 * width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))
