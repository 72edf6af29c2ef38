"""Statistics over a sweep's trials: intervals over seeds, configuration groups, the top trials,
parameter importances."""

from __future__ import annotations

import math
from typing import Any

from jepa_sweeps.report.runs import Sweep, Trial

TOP_TRIALS = 5  # trials whose training curves are drawn


def mean_interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% t-interval; no interval below 3 values."""
    n = len(values)
    mean = sum(values) / n
    if n < 3:
        return mean, None
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def groups(sweep: Sweep, trials: list[Trial], epoch: int) -> dict[tuple, list[tuple[Trial, float]]]:
    """Trials with a value at ``epoch``, grouped by configuration (seeds together)."""
    out: dict[tuple, list[tuple[Trial, float]]] = {}
    for trial in trials:
        value = trial.at(sweep.metric, epoch)
        if value is not None:
            out.setdefault(sweep.config_key(trial), []).append((trial, value))
    return out


def top_trials(sweep: Sweep, epoch: int, k: int = TOP_TRIALS) -> list[Trial]:
    scored = [(t.at(sweep.metric, epoch), t) for t in sweep.comparable]
    return [t for v, t in sorted((p for p in scored if p[0] is not None), key=lambda p: sweep.sign() * p[0])[:k]]


def importances(sweep: Sweep, epoch: int) -> tuple[dict[str, float], str]:
    """Parameter importances (PED-ANOVA, Optuna's default) of an Optuna study rebuilt from the
    runs: the searched values and the metric at the comparison epoch. Empty with the reason
    when there is nothing to rank."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    searched = sweep.searched
    values = {t.run.info.run_id: t.at(sweep.metric, epoch) for t in sweep.comparable}
    trials = [t for t in sweep.comparable if values[t.run.info.run_id] is not None]
    observed = {k: [t.params[k] for t in trials if k in t.params] for k in searched}
    varied = [k for k, vs in observed.items() if len(set(vs)) > 1]
    if len(varied) < 2:
        return {}, f"skipped: {len(varied)} searched parameter(s) varied, importances need at least 2"
    if len(trials) < 6:
        return {}, f"skipped: {len(trials)} trials with a value at epoch {epoch}, too few to rank parameters"
    distributions: dict[str, Any] = {}
    for key in varied:
        try:
            numbers = [float(v) for v in observed[key]]
            distributions[key] = FloatDistribution(min(numbers), max(numbers))
        except ValueError:
            distributions[key] = CategoricalDistribution(sorted(set(observed[key])))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if sweep.mode == "max" else "minimize")
    for t in trials:
        params = {
            k: float(t.params[k]) if isinstance(d, FloatDistribution) else t.params[k]
            for k, d in distributions.items() if k in t.params
        }
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: distributions[k] for k in params}, value=values[t.run.info.run_id]
        ))
    try:
        return dict(optuna.importance.get_param_importances(study)), ""
    except (ValueError, RuntimeError) as err:
        return {}, f"skipped: {err}"
