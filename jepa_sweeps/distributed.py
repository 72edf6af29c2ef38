"""Autograd-aware collectives.

Every helper decides "am I distributed?" at call time, never at construction time, so the same
module works in one process, under torchrun and inside Ray Train workers. The collectives come
from ``torch.distributed.nn.functional`` and their *return value* is used: their backward pass
all-reduces the gradient, which a plain in-place ``dist.all_reduce`` would not (that makes the
gradients ``1/world_size`` too small).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

# torch 2.x marks these deprecated in favour of private ``_functional_collectives`` whose autograd
# support differs per op; the documented autograd semantics here are what the objectives rely on.
warnings.filterwarnings("ignore", message="torch.distributed.nn.functional", category=FutureWarning)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks; gradients flow back to every rank's input."""
    if not is_distributed():
        return x
    return dist_fn.all_reduce(x, op=dist.ReduceOp.SUM)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks; gradients flow back to every rank's input."""
    if not is_distributed():
        return x
    return all_reduce_sum(x) / dist.get_world_size()


def gather_cat(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim`` in rank order, with gradient.

    The backward pass sums each rank's gradient for this rank's slice, as a global-batch loss
    computed on every rank requires.
    """
    if not is_distributed():
        return x
    return torch.cat(dist_fn.all_gather(x.contiguous()), dim=dim)


@torch.no_grad()
def all_reduce_detached(x: torch.Tensor, mean: bool = True) -> torch.Tensor:
    """Reduce a statistic that needs no gradient (logged losses, eval counts)."""
    if not is_distributed():
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / dist.get_world_size() if mean else y


@torch.no_grad()
def gather_detached(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0 (no gradient); sizes may differ per rank."""
    if not is_distributed():
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(s.item() for s in sizes))
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)], dim=0)
