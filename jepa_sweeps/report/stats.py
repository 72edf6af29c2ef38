"""Statistics over a sweep's trials: intervals over distinct seeds, configuration groups, the
values of finished trials, label-free scores against accuracy, the top trials, parameter importances."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from jepa_sweeps import names
from jepa_sweeps.evaluation.selection import MODES
from jepa_sweeps.report.runs import Sweep, Trial

TOP_TRIALS = 5  # trials whose training curves are drawn
SEED_PARAM = "seed"
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # the interval of a report is reproducible


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


@dataclass
class Point:
    """One seed of one configuration: copies of the same (configuration, seed) are one point."""

    seed: str
    value: float  # mean of the copies (they differ only by nondeterminism)
    copies: int


def distinct_seeds(sweep: Sweep, pairs: list[tuple[Trial, float]]) -> list[Point]:
    """Collapse trials of one configuration to one point per seed: a configuration trained twice
    with the same seed is a copy, not a second sample, so it must not narrow an interval."""
    by_seed: dict[tuple, list[float]] = {}
    for trial, value in pairs:
        by_seed.setdefault((sweep.config_key(trial), trial.params.get(SEED_PARAM, "?")), []).append(value)
    return [Point(seed, sum(vs) / len(vs), len(vs)) for (_, seed), vs in by_seed.items()]


def interval(points: list[Point]) -> tuple[float, float | None]:
    """Mean over distinct seeds and its 95% t-interval (none below 3 distinct seeds)."""
    return mean_interval([p.value for p in points])


def copies_note(points: list[Point]) -> str:
    """E.g. "×3 identical" when one seed was trained three times; empty without copies."""
    return ", ".join(f"×{p.copies} identical" for p in points if p.copies > 1)


@dataclass
class LambdaGroup:
    """What the metric-vs-λ plot draws for one configuration."""

    lam: float | None
    key: tuple
    points: list[Point]
    mean: float
    ci: float | None  # only with ≥ 3 distinct seeds


def lambda_groups(sweep: Sweep, trials: list[Trial], metric: str, epoch: int) -> list[LambdaGroup]:
    """Per configuration, ordered by λ: its distinct-seed points at ``epoch`` and their interval."""
    found: dict[tuple, list[tuple[Trial, float]]] = {}
    for t in trials:
        value = t.at(metric, epoch)
        if value is not None:
            found.setdefault((t.lam(), sweep.config_key(t)), []).append((t, value))
    out = []
    for (lam, key), pairs in found.items():
        points = distinct_seeds(sweep, pairs)
        out.append(LambdaGroup(lam, key, points, *interval(points)))
    return sorted(out, key=lambda g: (g.lam is None, g.lam or 0.0))


@dataclass
class Final:
    """A finished trial's value at its own last epoch (under ASHA, past the common epoch)."""

    trial: Trial
    value: float
    epoch: int


def finished_finals(trials: list[Trial], metric: str) -> list[Final]:
    out = []
    for t in trials:
        points = t.history(metric)
        if t.status == names.FINISHED and points:
            out.append(Final(t, points[-1][1], points[-1][0]))
    return out


def final_accuracy(trial: Trial) -> float | None:
    """``final_linear_acc``, else the linear probe at the last epoch."""
    if "final_linear_acc" in trial.run.data.metrics:
        return trial.run.data.metrics["final_linear_acc"]
    points = trial.history("linear_acc")
    return points[-1][1] if points else None


@dataclass
class ScoreCheck:
    """How well one label-free score ranks the finished trials by final accuracy."""

    score: str
    better: str  # "min" or "max"
    trials: int
    rho: float
    low: float
    high: float
    picked: Trial
    picked_acc: float
    best_acc: float


def label_free(sweep: Sweep) -> tuple[list[ScoreCheck], list[str]]:
    """Spearman ρ (bootstrap 95% CI over trials) of each label-free score with final accuracy over
    the finished trials, and the accuracy of the trial the score would pick; one line per skip."""
    import numpy as np
    from scipy.stats import spearmanr

    finished = [t for t in sweep.trials if t.status == names.FINISHED]
    accuracy = {t.run.info.run_id: final_accuracy(t) for t in finished}
    finished = [t for t in finished if accuracy[t.run.info.run_id] is not None]
    if len(finished) < 3:
        return [], [f"skipped: {len(finished)} finished trial(s) with a final linear accuracy, need at least 3"]
    checks, skipped = [], []
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    for score, better in MODES.items():
        pairs = [(t, t.history(score)[-1][1]) for t in finished if t.history(score)]
        pairs = [(t, v) for t, v in pairs if math.isfinite(v)]
        if len(pairs) < 3:
            skipped.append(f"{score}: skipped, logged by {len(pairs)} finished trial(s), need at least 3")
            continue
        x = np.array([v for _, v in pairs])
        y = np.array([accuracy[t.run.info.run_id] for t, _ in pairs])
        rho = float(spearmanr(x, y).statistic)
        draws = rng.integers(0, len(x), size=(BOOTSTRAP_RESAMPLES, len(x)))
        boot = [spearmanr(x[i], y[i]).statistic for i in draws if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0]
        low, high = (np.percentile(boot, [2.5, 97.5]) if boot else (math.nan, math.nan))
        picked = (min if better == "min" else max)(pairs, key=lambda p: p[1])[0]
        checks.append(ScoreCheck(score, better, len(pairs), rho, float(low), float(high), picked,
                                 accuracy[picked.run.info.run_id], max(accuracy.values())))
    return checks, skipped


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
