"""The define-by-run search space handed to Optuna.

A module-level class (never a closure, never defined in ``__main__``) because Ray's OptunaSearch
pickles it with plain pickle at every experiment checkpoint. Parameters are suggested in a fixed
order: the objective first, then the rest, skipping parameters the chosen objective does not
have (not every objective has a λ) and those whose ``when`` excludes it.
"""

from __future__ import annotations

from typing import Any

import optuna

from jepa_sweeps.objectives import DEFAULT_OBJECTIVE, has_param
from jepa_sweeps.distributions import Distribution
from jepa_sweeps.spec import SweepSpec

BRANCH = "|branch"  # suffix of the categorical that picks a branch of a union ("0 or loguniform")


def _branch_label(option: Any) -> Any:
    return option.label() if isinstance(option, Distribution) else option


def _is_union(dist: Distribution) -> bool:
    return dist.kind == "choice" and any(isinstance(o, Distribution) for o in dist.options)


class SearchSpace:
    """Callable ``(optuna.Trial) -> None`` that suggests every searched parameter."""

    def __init__(self, spec: SweepSpec):
        searched = spec.searched
        order = sorted(searched, key=lambda k: k != "objective.name")
        self.params: list[tuple[str, Distribution]] = [(k, searched[k]) for k in order]
        base_name = spec.base_trial().get("objective", {}).get("name", DEFAULT_OBJECTIVE)
        self.base_objective: str = base_name

    def applies(self, key: str, dist: Distribution, objective: str) -> bool:
        if dist.when and objective not in dist.when:
            return False
        if key.startswith("objective.") and key != "objective.name":
            return has_param(objective, key.split(".", 1)[1])
        return True

    def __call__(self, trial: optuna.Trial) -> None:
        objective = self.base_objective
        for key, dist in self.params:
            if not self.applies(key, dist, objective):
                continue
            value = suggest(trial, key, dist)
            if key == "objective.name":
                objective = value

    def optuna_params(self, point: dict[str, Any]) -> dict[str, Any]:
        """Optuna's parameter names and values for a point given in spec keys (to enqueue)."""
        out: dict[str, Any] = {}
        for key, value in point.items():
            dist = dict(self.params)[key]
            if not _is_union(dist):
                out[key] = value
                continue
            for option in dist.options:
                if isinstance(option, Distribution) and option.contains(value):
                    out[key + BRANCH], out[key] = option.label(), value
                    break
                if not isinstance(option, Distribution) and option == value:
                    out[key + BRANCH] = option
                    break
        return out


def suggest(trial: optuna.Trial, key: str, dist: Distribution) -> Any:
    if dist.kind == "uniform":
        return trial.suggest_float(key, dist.low, dist.high)
    if dist.kind == "loguniform":
        return trial.suggest_float(key, dist.low, dist.high, log=True)
    if dist.kind == "int":
        return trial.suggest_int(key, int(dist.low), int(dist.high))
    if not _is_union(dist):
        return trial.suggest_categorical(key, list(dist.options))
    labels = [_branch_label(o) for o in dist.options]
    picked = trial.suggest_categorical(key + BRANCH, labels)
    option = dist.options[labels.index(picked)]
    return suggest(trial, key, option) if isinstance(option, Distribution) else option


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """Spec-keyed values from a Tune trial config (drops branch pickers and Ray's own keys).

    A union resolved to a constant branch carries the value only in its picker.
    """
    params: dict[str, Any] = {}
    for key, value in config.items():
        if key.startswith("__"):
            continue
        if key.endswith(BRANCH):
            base = key.removesuffix(BRANCH)
            if base not in config:
                params[base] = value
        else:
            params[key] = value
    return params
