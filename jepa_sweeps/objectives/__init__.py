"""Objectives: ``build(name, **params)``; one module per objective, found via the registry."""

from jepa_sweeps.objectives import cjepa, ema, infonce, sigreg, vicreg  # noqa: F401  (registration)
from jepa_sweeps.objectives.base import (
    DEFAULT_OBJECTIVE,
    REGISTRY,
    Objective,
    ObjectiveParams,
    Refusal,
    Weighted,
    build,
    has_param,
    invariance,
)

__all__ = [
    "DEFAULT_OBJECTIVE", "REGISTRY", "Objective", "ObjectiveParams", "Refusal", "Weighted", "build", "has_param",
    "invariance",
]
