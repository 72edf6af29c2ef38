"""Objectives: ``build(name, **params)``; one module per regulariser, found via the registry."""

from jepa_sweeps.objectives import ema, infonce, sigreg, vicreg  # noqa: F401  (registration)
from jepa_sweeps.objectives.base import REGISTRY, Objective, ObjectiveParams, build, invariance

__all__ = ["REGISTRY", "Objective", "ObjectiveParams", "build", "invariance"]
