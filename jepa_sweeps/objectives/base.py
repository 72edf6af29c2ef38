"""The shared interface of every objective, and its registry.

An objective sees projector outputs ``z`` of shape (V, N, K) — V views of N local samples, the
first ``n_global`` views global — and returns a dict with ``loss``, ``inv_loss`` and
``reg_loss``. The invariance term is LeJEPA's: every view pulled to the mean of the global views
(or of a teacher's projections of them). Each objective lives in its own file: a pydantic params
model plus an ``nn.Module``, joined by ``@register``, imported in ``objectives/__init__.py``.

Everything an objective needs beyond its loss it declares through the hooks below, which the
training loop and the config layer call without knowing which objective runs: state set up from
the model's parts (kept as submodules and buffers, so the model's ``state_dict`` checkpoints it
and DDP broadcasts it), targets for the invariance term, work after each optimizer step, and the
config combinations it refuses.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from jepa_sweeps.precision import fp32

#: the objective of a trial config that names none
DEFAULT_OBJECTIVE = "sigreg"


class ObjectiveParams(BaseModel):
    """Parameters of one objective, validated by the config layer (unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid")


class WeightedParams(ObjectiveParams):
    """Objectives of the form ``(1-λ)·invariance + λ·regulariser``."""

    lam: float = Field(0.05, ge=0.0, le=1.0, description="weight λ of the regulariser")

    @property
    def lam_additive(self) -> float:
        """λ in the additive convention other LeJEPA code uses, ``invariance + λ'·regulariser``:
        the same minimiser at λ' = λ/(1-λ). λ = 1 (no invariance term) is λ' = inf."""
        return self.lam / (1 - self.lam) if self.lam < 1 else float("inf")


class Refusal(NamedTuple):
    """A trial config an objective cannot train: the dotted key, its value, and why."""

    key: str
    value: Any
    problem: str


@fp32  # views close to their centre: z − c cancels most of bf16's 8 bits before it is squared
def invariance(z: torch.Tensor, n_global: int, target: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared distance of every view to the centre of the global views, over (V, N, K).

    The centre keeps its gradient, as in LeJEPA. ``target`` (V_g, N, K), a teacher's projections
    of the global views, replaces the student's own as the centre, without gradient.
    """
    centre = z[:n_global].mean(0) if target is None else target.detach().mean(0)
    return (z - centre).square().mean()


class Objective(nn.Module):
    """Base class: subclasses set ``Params`` and implement
    ``forward(z, n_global, step, target=None) -> dict`` (see the module docstring)."""

    Params: ClassVar[type[ObjectiveParams]] = ObjectiveParams
    name: ClassVar[str] = ""  # set by ``register``

    def __init__(self, params: ObjectiveParams, embed_dim: int) -> None:
        """``embed_dim`` (the projector's output size) is structural, for objectives with layers."""
        super().__init__()
        self.params = params

    @classmethod
    def refuse(cls, trial: Any) -> Refusal | None:
        """A reason this objective cannot train the (otherwise valid) trial config, or None."""
        return None

    @classmethod
    def unknown_parameter(cls, param: str) -> str:
        """The config error for a parameter this objective does not have."""
        have = ", ".join(cls.Params.model_fields) or "none"
        return f"not a parameter of objective {cls.name!r} (its parameters: {have})"

    def setup(self, backbone: nn.Module, projector: nn.Module) -> None:
        """Called once by the model owning the objective, before DDP wraps it: state built from
        the student's parts goes here (as submodules or buffers)."""

    def targets(self, globals_: torch.Tensor) -> torch.Tensor | None:
        """Targets (V_g, N, K) for the invariance term from the global views (V_g, N, C, S, S),
        or None for the student's own centre."""
        return None

    def after_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called after each optimizer step; returns schedule values to log with the epoch."""
        return {}


class Weighted(Objective):
    """``(1-λ)·invariance + λ·regulariser``: subclasses implement only ``regulariser``."""

    Params = WeightedParams

    def regulariser(self, z: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The regulariser of ``z`` (V, N, K) and any further terms to log."""
        raise NotImplementedError(type(self).__name__)

    def forward(
        self, z: torch.Tensor, n_global: int = 2, step: int = 0, target: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        inv = invariance(z, n_global, target)
        reg, extra = self.regulariser(z, step)
        lam = self.params.lam
        return {"loss": (1 - lam) * inv + lam * reg, "inv_loss": inv, "reg_loss": reg, **extra}


REGISTRY: dict[str, type[Objective]] = {}


def register(name: str) -> Callable[[type[Objective]], type[Objective]]:
    def add(cls: type[Objective]) -> type[Objective]:
        if name in REGISTRY:
            raise ValueError(f"objective {name!r} registered twice")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return add


def has_param(objective: str, param: str) -> bool:
    """Whether the registered ``objective`` has the parameter ``param`` (e.g. ``lam``)."""
    return param in REGISTRY[objective].Params.model_fields


def build(name: str, *, embed_dim: int = 64, **params: object) -> Objective:
    """Build a registered objective from keyword parameters (validated here); λ is ``lam``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown objective {name!r}; known: {', '.join(sorted(REGISTRY))}")
    cls = REGISTRY[name]
    return cls(cls.Params(**params), embed_dim)
