"""The MLP between backbone and loss (LeJEPA style); probes read the backbone, the loss reads this."""

from __future__ import annotations

import torch
from torch import nn

from jepa_sweeps.models.norm import GlobalBatchNorm


class Projector(nn.Module):
    """(Linear → GlobalBatchNorm → ReLU) × (num_layers − 1), then a Linear; num_layers=1 is one Linear."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            # No bias before the norm: its shift makes it redundant.
            layers += [nn.Linear(dim, hidden_dim, bias=False), GlobalBatchNorm(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
