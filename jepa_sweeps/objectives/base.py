"""The shared interface of every objective, and its registry.

An objective sees projector outputs ``z`` of shape (V, N, K) — V views of N local samples, the
first ``n_global`` views global — and returns a dict with ``loss``, ``inv_loss`` and
``reg_loss``. The invariance term is LeJEPA's: every view pulled to the mean of the global views.
Each regulariser lives in its own file: a pydantic params model plus an ``nn.Module``, joined by
``@register``. Adding a fifth is one file imported in ``objectives/__init__.py``.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from jepa_sweeps.precision import fp32


class ObjectiveParams(BaseModel):
    """Parameters of one objective, validated by the config layer (unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid")


class WeightedParams(ObjectiveParams):
    """Objectives of the form ``(1-λ)·invariance + λ·regulariser``."""

    lam: float = Field(0.05, ge=0.0, le=1.0, description="weight λ of the regulariser")


@fp32  # views close to their centre: z − c cancels most of bf16's 8 bits before it is squared
def invariance(z: torch.Tensor, n_global: int, target: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared distance of every view to the centre of the global views, over (V, N, K).

    ``target`` replaces the centre (the EMA objective passes the teacher's). The centre keeps its
    gradient, as in LeJEPA.
    """
    centre = z[:n_global].mean(0) if target is None else target
    return (z - centre).square().mean()


class Objective(nn.Module):
    """Base class: subclasses set ``Params`` and implement ``forward``."""

    Params: type[ObjectiveParams] = ObjectiveParams
    #: whether the trial loop must keep an EMA teacher and pass its global-view projections
    needs_teacher: bool = False


REGISTRY: dict[str, type[Objective]] = {}


def register(name: str) -> Callable[[type[Objective]], type[Objective]]:
    def add(cls: type[Objective]) -> type[Objective]:
        if name in REGISTRY:
            raise ValueError(f"objective {name!r} registered twice")
        REGISTRY[name] = cls
        return cls

    return add


def build(name: str, *, embed_dim: int | None = None, **params: object) -> Objective:
    """Build a registered objective from keyword parameters (validated here); λ is ``lam``.

    ``embed_dim`` (the projector's output size) is structural, not a hyperparameter: only
    objectives with their own layers (the EMA predictor) take it.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    kwargs = cls.Params(**params).model_dump()
    if embed_dim is not None and "embed_dim" in inspect.signature(cls).parameters:
        kwargs["embed_dim"] = embed_dim
    return cls(**kwargs)
