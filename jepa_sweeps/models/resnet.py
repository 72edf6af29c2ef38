"""CIFAR-style ResNet-18: the usual SSL backbone for 32×32 images.

Differs from the ImageNet model in its stem (one 3×3 stride-1 conv, no max-pool), so a 32×32
image still reaches the last stage at 4×4. Every norm is a ``GlobalBatchNorm`` so a multi-worker
trial trains like one process on the global batch.
"""

from __future__ import annotations

import torch
from torch import nn

from jepa_sweeps.models.norm import GlobalBatchNorm


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = GlobalBatchNorm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = GlobalBatchNorm(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), GlobalBatchNorm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, blocks: tuple[int, ...], width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            GlobalBatchNorm(width),
            nn.ReLU(inplace=True),
        )
        stages, c_in = [], width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(c_in, c_out, stride=2 if i > 0 and j == 0 else 1))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.embed_dim = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


def resnet18(in_channels: int, width: int = 64) -> ResNet:
    """``width`` is the first stage's channels (64 in the standard model; smaller for quick tests)."""
    return ResNet(in_channels, (2, 2, 2, 2), width)
