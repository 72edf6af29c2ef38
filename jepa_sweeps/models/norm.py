"""Batch normalisation over the global batch of all DDP ranks.

A trial with W workers must train exactly like one process on the whole batch. Plain BatchNorm
only sees the local shard, and PyTorch's ``SyncBatchNorm`` refuses CPU tensors, so the batch
statistics are reduced here with the autograd-aware ``all_reduce_sum``: its backward pass
sends every rank's gradient of the shared statistics back to every rank, which is what makes
the input gradients equal to the single-process ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jepa_sweeps.distributed import all_reduce_sum, world_size
from jepa_sweeps.precision import fp32


class GlobalBatchNorm(nn.Module):
    """Drop-in for ``nn.BatchNorm1d/2d`` on inputs (N, C, *) whose training statistics span all ranks.

    In one process it computes what ``nn.BatchNorm`` computes (outputs, gradients, running
    statistics). Whether to reduce across ranks is decided at every call, so the same module
    works in a notebook, under torchrun and inside Ray Train workers.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @fp32  # var = E[x²] − mean² cancels catastrophically in bf16; the sums over the batch need fp32
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected input (N, {self.num_features}, *), got {tuple(x.shape)}")
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

        dims = [0, *range(2, x.dim())]
        local_count = x.numel() // self.num_features
        if local_count * world_size() < 2:
            raise ValueError(f"batch norm needs more than one value per channel in training, got {tuple(x.shape)}")
        # One collective for all three statistics; the count rides along so ranks may hold different N.
        count = x.new_full((1,), float(local_count))
        stats = all_reduce_sum(torch.cat([x.sum(dims), x.square().sum(dims), count]))
        total_sum, total_sq, n = stats.split([self.num_features, self.num_features, 1])
        mean = total_sum / n
        var = (total_sq / n - mean.square()).clamp_min(0.0)  # biased, as used for normalising

        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / (n - 1), self.momentum)

        shape = (1, self.num_features) + (1,) * (x.dim() - 2)
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return x * scale.view(shape) + shift.view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
