"""Evaluation of frozen backbone features: kNN, RankMe, offline linear probe.

Features come from un-augmented (resized, normalised) images. Under DDP each rank embeds a
contiguous shard and the shards are gathered in rank order, so every rank computes the same
metrics on the full split.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from jepa_sweeps.distributed import gather_detached, rank, world_size
from jepa_sweeps.precision import fp32


@torch.no_grad()
def embed(
    encoder: nn.Module, images: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor], batch: int = 512
) -> torch.Tensor:
    """Backbone features of uint8 ``images`` (all ranks together, in order)."""
    n, w, r = images.shape[0], world_size(), rank()
    lo, hi = n * r // w, n * (r + 1) // w
    was_training = encoder.training
    encoder.eval()
    parts = [encoder(prepare(images[i : min(i + batch, hi)])) for i in range(lo, hi, batch)]
    encoder.train(was_training)
    local = torch.cat(parts) if parts else images.new_zeros((0, 1), dtype=torch.float32)
    return gather_detached(local.float())


@fp32  # top-k of cosine similarities: bf16 ties and reorders neighbours whose similarity differs < 2⁻⁸
@torch.no_grad()
def knn_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> float:
    """Cosine kNN with exp(sim/T)-weighted votes (the InstDisc/DINO protocol)."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    k = min(k, train.shape[0])
    correct = 0
    for i in range(0, test.shape[0], chunk):
        sims, idx = (test[i : i + chunk] @ train.T).topk(k, dim=1)
        votes = torch.zeros(sims.shape[0], num_classes, device=train.device)
        votes.scatter_add_(1, train_labels[idx], (sims / temperature).exp())
        correct += int((votes.argmax(1) == test_labels[i : i + chunk]).sum())
    return correct / test.shape[0]


@torch.no_grad()
def rankme(features: torch.Tensor, eps: float = 1e-7) -> float:
    """Effective rank exp(H(σ/Σσ)) of the feature matrix (Garrido et al., 2023): ≈1 when collapsed."""
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


@fp32  # L-BFGS line searches compare losses that differ far below bf16's resolution
def linear_probe_accuracy(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    iterations: int = 100,
    weight_decay: float = 1e-4,
) -> float:
    """Multinomial logistic regression on standardised frozen features, fitted with full-batch
    L-BFGS (deterministic, no learning rate to tune)."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    mean, std = train.mean(0), train.std(0) + 1e-6
    x, xt = (train - mean) / std, (test - mean) / std
    head = nn.Linear(x.shape[1], num_classes).to(x.device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(x), train_labels) + weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((head(xt).argmax(1) == test_labels).float().mean())
