"""``python -m jepa_sweeps.report EXPERIMENT_OR_SPEC [--csv DIR] [--out DIR] [--tracking-uri URI]``

Answers a sweep's questions from its MLflow runs in one command: a comparison table in the
terminal, PNG plots (metric vs λ with 95% intervals over seeds, view and batch-size effects,
training curves of the top trials, parameter importances) next to raw-pixel and random-init
baselines, one self-contained HTML report, and with ``--csv`` every metric curve as ``step,value``
files for plotting elsewhere. ``finish_sweep`` runs the same code to put the report on the
sweep's parent run.

Trials are compared at one epoch: the last epoch every finished or early-stopped trial reached,
so ASHA-stopped trials are not compared against longer-trained ones.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from jepa_sweeps.config import ConfigError, TrialConfig

EXIT_USAGE = 2
COMPARABLE = ("finished", "stopped early")  # jepa.status of trials that count in comparisons
CURVES = ("knn_acc", "inv_loss", "reg_loss")
TOP_TRIALS = 5
EFFECTS = {
    "views.n_global": "global views (V_g)", "views.n_local": "local views (V_l)", "optim.batch_size": "batch size",
}
LABELS = {"objective.lam": "λ", "objective.name": "regulariser", "views.n_global": "V_g", "views.n_local": "V_l",
          "optim.batch_size": "batch"}
PICTURES = ("lambda.png", "effects.png", "curves.png", "importance.png")
EXTRA_COLUMNS = ("linear_acc", "rankme", "knn_acc_2x", "attn_entropy", "attn_head_similarity")


class ReportError(Exception):
    """Nothing to report on; ``str`` is one line for the terminal."""


@dataclass
class Trial:
    run: Run
    client: MlflowClient
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.run.info.run_name or self.run.info.run_id[:8]

    @property
    def status(self) -> str:
        return self.run.data.tags.get("jepa.status", self.run.info.status.lower())

    @property
    def params(self) -> dict[str, str]:
        return self.run.data.params

    def history(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of a metric, by step; a step logged twice (resumed trial) keeps its order."""
        if key not in self.histories:
            metrics = self.client.get_metric_history(self.run.info.run_id, key) if key in self.run.data.metrics else []
            self.histories[key] = [(m.step, m.value) for m in sorted(metrics, key=lambda m: (m.step, m.timestamp))]
        return self.histories[key]

    def last_epoch(self, key: str) -> int | None:
        points = self.history(key)
        return points[-1][0] if points else None

    def at(self, key: str, epoch: int) -> float | None:
        """The value at ``epoch`` (metrics carry over between evals, so the last one up to it)."""
        last = self.last_epoch(key)
        if last is None or last < epoch:
            return None
        return [v for s, v in self.history(key) if s <= epoch][-1]

    def lam(self) -> float | None:
        try:
            return float(self.params.get("lambda", "n/a"))
        except ValueError:
            return None


@dataclass
class Sweep:
    experiment: str
    parent: Run
    trials: list[Trial]

    @property
    def name(self) -> str:
        return self.parent.info.run_name or self.parent.info.run_id

    @property
    def metric(self) -> str:
        return self.parent.data.params.get("metric", "knn_acc")

    @property
    def mode(self) -> str:
        return self.parent.data.params.get("mode", "max")

    @property
    def searched(self) -> list[str]:
        text = self.parent.data.params.get("searched", "none")
        return [] if text == "none" else text.split(",")

    @property
    def comparable(self) -> list[Trial]:
        return [t for t in self.trials if t.status in COMPARABLE and t.last_epoch(self.metric) is not None]

    def config_key(self, trial: Trial) -> tuple[tuple[str, str], ...]:
        """What distinguishes a configuration: the searched values (seeds are repeats of one)."""
        keys = self.searched or ["regulariser", "lambda"]
        return tuple((k, trial.params.get(k, "")) for k in keys)

    def sign(self) -> int:
        return -1 if self.mode == "max" else 1


# -- locating the sweep ----------------------------------------------------------------------------
def resolve(target: str, tracking_uri: str | None) -> tuple[str, str]:
    """(tracking URI, experiment name) from a spec path or an experiment name, as the runner does."""
    from jepa_sweeps.spec import MLflowSpec, SweepSpec, load_spec
    from jepa_sweeps.sweep import locate

    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        overrides = [f"mlflow.tracking_uri={tracking_uri}"] if tracking_uri else []
        loc = locate(load_spec(target, overrides))
        return loc.tracking_uri, loc.experiment
    return locate(SweepSpec(name="report", mlflow=MLflowSpec(tracking_uri=tracking_uri))).tracking_uri, target


def open_store(uri: str) -> MlflowClient:
    """A client, refusing a SQLite file that does not exist (MLflow would create an empty one)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite" and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ReportError(f"no MLflow store at {uri}")
    return MlflowClient(uri)


def load_sweep(client: MlflowClient, experiment: str, parent_run_id: str | None = None) -> Sweep:
    """The given sweep, or the latest sweep (parent run tagged ``jepa.role=sweep``) of an experiment."""
    if parent_run_id is not None:
        parent = client.get_run(parent_run_id)
        experiment_id = parent.info.experiment_id
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None or found.lifecycle_stage == "deleted":
            raise ReportError(f"no MLflow experiment named {experiment!r} in {client.tracking_uri}")
        experiment_id = found.experiment_id
        parents = client.search_runs(
            [experiment_id], "tags.`jepa.role` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1
        )
        if not parents:
            raise ReportError(f"experiment {experiment!r} has no sweep runs")
        parent = parents[0]
    children = client.search_runs(
        [experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=50000
    )
    sweep = Sweep(experiment, parent, [Trial(r, client) for r in sorted(children, key=lambda r: r.info.start_time)])
    if not sweep.comparable:
        raise ReportError(
            f"experiment {experiment!r} has no finished runs in its latest sweep ({sweep.name}, {len(children)} trials)"
        )
    return sweep


def common_epoch(sweep: Sweep) -> int:
    return min(t.last_epoch(sweep.metric) for t in sweep.comparable)


# -- statistics ------------------------------------------------------------------------------------
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


def config_label(key: tuple[tuple[str, str], ...], skip: tuple[str, ...] = ()) -> str:
    parts = [f"{LABELS.get(k, k)}={_short(v)}" for k, v in key if k not in skip]
    return ", ".join(parts) or "(fixed config)"


def _short(value: str) -> str:
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


# -- tables ----------------------------------------------------------------------------------------
def comparison_rows(sweep: Sweep, epoch: int) -> tuple[list[str], list[list[str]]]:
    """One row per trial, best first at ``epoch``; trials without a value there last."""
    extra = [k for k in EXTRA_COLUMNS if k != sweep.metric and any(k in t.run.data.metrics for t in sweep.trials)]
    searched = sweep.searched
    header = ["run", "status", "epochs", f"{sweep.metric}@{epoch}", *extra, "final_linear_acc"] + [_label(k) for k in searched]

    def score(t: Trial) -> float:
        value = t.at(sweep.metric, epoch) if t.status in COMPARABLE else None
        return math.inf if value is None else sweep.sign() * value

    rows = []
    for t in sorted(sweep.trials, key=score):
        at = t.status in COMPARABLE
        rows.append(
            [t.name, t.status, str(t.last_epoch(sweep.metric) or 0), _fmt(t.at(sweep.metric, epoch) if at else None)]
            + [_fmt(t.at(k, epoch) if at else None, 2 if k == "rankme" else 4) for k in extra]
            + [_fmt(t.run.data.metrics.get("final_linear_acc"))]
            + [_short(t.params.get(k, "–")) for k in searched]
        )
    return header, rows


def _label(key: str) -> str:
    return LABELS.get(key, key)


def ablation_rows(sweep: Sweep, epoch: int) -> tuple[list[str], list[list[str]]]:
    """Per regulariser: its best configuration (by mean over seeds) and the spread of all trials."""
    header = ["regulariser", "trials", "best config", f"{sweep.metric}@{epoch} (mean ± 95% CI)", "seeds",
              "median of all", "rankme (best)"]
    by_reg: dict[str, list[Trial]] = {}
    for t in sweep.comparable:
        by_reg.setdefault(t.params.get("regulariser", "?"), []).append(t)
    rows = []
    for reg, trials in sorted(by_reg.items()):
        grouped = groups(sweep, trials, epoch)
        if not grouped:
            continue
        stats = {k: mean_interval([v for _, v in g]) for k, g in grouped.items()}
        best = min(grouped, key=lambda k: sweep.sign() * stats[k][0])
        mean, ci = stats[best]
        median = statistics.median(v for g in grouped.values() for _, v in g)
        ranks = [t.at("rankme", epoch) for t, _ in grouped[best]]
        ranks = [r for r in ranks if r is not None]
        rows.append([
            reg, str(len(trials)), config_label(best, skip=("objective.name",)),
            _fmt(mean) + (f" ± {ci:.4f}" if ci is not None else ""), str(len(grouped[best])),
            _fmt(median), _fmt(sum(ranks) / len(ranks), 1) if ranks else "–",
        ])
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -- baselines -------------------------------------------------------------------------------------
def _quiet_downloads() -> None:
    """MLflow draws a progress bar per downloaded file: noise in a report's output."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def trial_config(client: MlflowClient, trial: Trial) -> TrialConfig | None:
    """The exact config the runner stored with the trial (``trial_config.json``), if present."""
    from mlflow.exceptions import MlflowException

    _quiet_downloads()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(trial.run.info.run_id, "trial_config.json", tmp)
            return TrialConfig.model_validate(json.loads(Path(path).read_text()))
    except (MlflowException, OSError, ValueError):
        return None


def compute_baselines(cfg: TrialConfig) -> dict[str, dict[str, float]]:
    """kNN accuracy and RankMe of raw pixels and of the trial's encoder at random init, on the
    trial's dataset and eval protocol: what SSL has to beat, and what collapse falls below."""
    from jepa_sweeps.data.datasets import load_dataset
    from jepa_sweeps.data.views import resize_normalise
    from jepa_sweeps.evaluation.probes import embed, knn_accuracy, rankme
    from jepa_sweeps.train import build_model

    data = load_dataset(cfg.data.name, cfg.data.path, cfg.data.image_size)

    def prepare(x: Any) -> Any:
        return resize_normalise(x, cfg.global_size, data.mean, data.std)

    def scores(train: Any, test: Any) -> dict[str, float]:
        knn = knn_accuracy(train, data.train_labels, test, data.test_labels, cfg.eval.knn_k, cfg.eval.knn_temperature)
        return {"knn_acc": knn, "rankme": rankme(test)}

    backbone = build_model(cfg, data).backbone
    pixels = [prepare(x).flatten(1) for x in (data.train_images, data.test_images)]
    features = [embed(backbone, x, prepare) for x in (data.train_images, data.test_images)]
    return {"raw pixels": scores(*pixels), f"random-init {cfg.encoder.name}": scores(*features)}


def baselines(client: MlflowClient, sweep: Sweep, cache: Path, notes: list[str]) -> dict[str, dict[str, float]]:
    """Baselines of each dataset/encoder the sweep used, cached in ``cache`` (JSON) across reports."""
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    out: dict[str, dict[str, float]] = {}
    seen: set[str] = set()
    for trial in sweep.comparable:
        group = json.dumps({k: v for k, v in sorted(trial.params.items()) if k.startswith(("data.", "encoder."))})
        if group in seen:
            continue
        seen.add(group)
        cfg = trial_config(client, trial)
        if cfg is None:
            notes.append(f"baselines: no trial_config.json on {trial.name}")
            continue
        key = json.dumps([cfg.data.model_dump(mode="json"), cfg.encoder.model_dump(mode="json"), cfg.global_size,
                          cfg.seed, cfg.eval.knn_k, cfg.eval.knn_temperature])
        if key not in known:
            try:
                known[key] = compute_baselines(cfg)
            except (OSError, ValueError) as err:
                notes.append(f"baselines for {cfg.data.name}/{cfg.encoder.name} not computed: {err}")
                continue
        suffix = f" ({cfg.data.name}, {cfg.encoder.name})" if len(seen) > 1 else ""
        out.update({name + suffix: values for name, values in known[key].items()})
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(known, indent=1))
    return out


# -- plots -----------------------------------------------------------------------------------------
def _figure(panels: int, width: float = 5.2, height: float = 4.0) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * panels, height), layout="constrained")
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=110)
    return path


def lambda_plot(sweep: Sweep, epoch: int, base: dict[str, dict[str, float]], path: Path) -> Path | None:
    """Metric vs λ per regulariser on a symlog axis (λ=0 a decade left of the smallest λ > 0);
    every trial a dot, mean ± 95% t-interval where a configuration has ≥ 3 seeds."""
    trials = sweep.comparable
    lams = sorted({t.lam() for t in trials if t.lam() is not None})
    if len(lams) < 2:
        return None
    logged = {k for t in trials for k in t.run.data.metrics}
    metrics = [sweep.metric] + [m for m in ("knn_acc", "rankme") if m != sweep.metric and m in logged]
    fig, axes = _figure(len(metrics))
    regs = sorted({t.params.get("regulariser", "?") for t in trials})
    positive = [lam for lam in lams if lam > 0]
    for ax, metric in zip(axes, metrics):
        for color, reg in enumerate(regs):
            c = f"C{color}"
            mine = [t for t in trials if t.params.get("regulariser", "?") == reg]
            points: dict[tuple, list[float]] = {}
            for t in mine:
                value = t.at(metric, epoch)
                if value is not None:
                    points.setdefault((t.lam(), sweep.config_key(t)), []).append(value)
            if all(lam is None for lam, _ in points):  # no λ (ema): its mean as a level
                values = [v for vs in points.values() for v in vs]
                if values:
                    label = f"{reg} (no λ), mean of {len(values)}"
                    ax.axhline(sum(values) / len(values), color=c, ls="--", label=label)
                continue
            ordered = sorted((k for k in points if k[0] is not None), key=lambda k: k[0])
            xs = [lam for lam, key in ordered for _ in points[(lam, key)]]
            ys = [v for k in ordered for v in points[k]]
            ax.scatter(xs, ys, color=c, alpha=0.45, s=18, lw=0, label=f"{reg}: trials")
            centres = [(lam, *mean_interval(points[(lam, key)])) for lam, key in ordered]
            ax.plot([x for x, _, _ in centres], [m for _, m, _ in centres], color=c, lw=1, alpha=0.8,
                    label=f"{reg}: mean per configuration")
            with_ci = [(x, m, ci) for x, m, ci in centres if ci is not None]
            if with_ci:
                ax.errorbar([x for x, _, _ in with_ci], [m for _, m, _ in with_ci], yerr=[ci for _, _, ci in with_ci],
                            fmt="o", color=c, capsize=4, ms=5, label=f"{reg}: mean ± 95% t-interval (≥3 seeds)")
        for i, (name, values) in enumerate(base.items()):
            if metric in values:
                ax.axhline(values[metric], color="0.4", ls=[":", "-."][i % 2], lw=1,
                           label=f"{name}: {values[metric]:.3g}")
        linthresh = positive[0] if positive else 1.0
        ax.set_xscale("symlog", linthresh=linthresh, linscale=1.0)
        ax.set_xlim(-0.5 * linthresh, lams[-1] * 1.6)  # room for the outer error bars
        if len(lams) <= 8:
            ax.set_xticks(lams, [f"{lam:g}" for lam in lams])
            ax.minorticks_off()
        ax.set_xlabel("λ (symlog axis; λ=0 at the left)")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} at epoch {epoch}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{sweep.name}: metric vs λ — {_epoch_note(sweep, epoch)}", fontsize=10)
    return _save(fig, path)


def _epoch_note(sweep: Sweep, epoch: int) -> str:
    return f"epoch {epoch}, the last epoch all {len(sweep.comparable)} finished or stopped trials reached"


def effects_plot(sweep: Sweep, epoch: int, path: Path) -> Path | None:
    """The metric against each of views and batch size that the sweep varied (marginal effects)."""
    trials = [t for t in sweep.comparable if t.at(sweep.metric, epoch) is not None]
    varied = [k for k in EFFECTS if len({t.params[k] for t in trials if k in t.params}) > 1]
    if not varied:
        return None
    fig, axes = _figure(len(varied), 4.5, 3.6)
    for ax, key in zip(axes, varied):
        by_x: dict[float, list[float]] = {}
        for t in (t for t in trials if key in t.params):
            by_x.setdefault(float(t.params[key]), []).append(t.at(sweep.metric, epoch))
        xs = sorted(by_x)
        for x in xs:
            ax.scatter([x] * len(by_x[x]), by_x[x], color="C0", alpha=0.4, s=14, lw=0)
        stats = [mean_interval(by_x[x]) for x in xs]
        ax.plot(xs, [m for m, _ in stats], color="C0", marker="o", label="mean")
        with_ci = [(x, m, ci) for x, (m, ci) in zip(xs, stats) if ci is not None]
        if with_ci:
            ax.errorbar([x for x, _, _ in with_ci], [m for _, m, _ in with_ci], yerr=[c for _, _, c in with_ci],
                        fmt="none", color="C0", capsize=4, label="95% CI (≥3 trials)")
        if key == "optim.batch_size":
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(EFFECTS[key])
        ax.set_ylabel(f"{sweep.metric} at epoch {epoch}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{sweep.name}: effect of each varied setting (every trial a dot)", fontsize=10)
    return _save(fig, path)


def top_trials(sweep: Sweep, epoch: int, k: int = TOP_TRIALS) -> list[Trial]:
    scored = [(t.at(sweep.metric, epoch), t) for t in sweep.comparable]
    return [t for v, t in sorted((p for p in scored if p[0] is not None), key=lambda p: sweep.sign() * p[0])[:k]]


def curves_plot(sweep: Sweep, epoch: int, path: Path) -> Path:
    """Training curves of the top trials, overlaid; the dotted line marks the comparison epoch."""
    fig, axes = _figure(len(CURVES), 4.6, 3.6)
    for ax, metric in zip(axes, CURVES):
        positive = True
        for i, t in enumerate(top_trials(sweep, epoch)):
            points = t.history(metric)
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], color=f"C{i}", marker=".", ms=4, label=t.name)
                positive = positive and all(v > 0 for _, v in points)
        if metric != "knn_acc" and positive and ax.lines:
            ax.set_yscale("log")
        ax.axvline(epoch, color="0.5", ls=":", lw=1)
        ax.set_xlabel("epoch")
        ax.set_title(metric, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    title = f"{sweep.name}: training curves of the top {TOP_TRIALS} trials by {sweep.metric} at epoch {epoch}"
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


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


def importance_plot(found: dict[str, float], sweep: Sweep, path: Path) -> Path:
    fig, (ax,) = _figure(1, 5.5, 0.9 + 0.4 * len(found))
    names = list(found)[::-1]
    ax.barh([_label(n) for n in names], [found[n] for n in names], color="C0")
    ax.set_xlabel(f"importance for {sweep.metric} (PED-ANOVA, sums to 1)")
    ax.set_title(f"{sweep.name}: parameter importances", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def best_trial_pictures(client: MlflowClient, trial: Trial, out: Path) -> list[Path]:
    """The best trial's diagnostic pictures of its last plotted epoch (spectrum; PCA, attention)."""
    from mlflow.exceptions import MlflowException

    _quiet_downloads()
    try:
        epochs = [a.path for a in client.list_artifacts(trial.run.info.run_id, "diagnostics") if a.is_dir]
        if not epochs:
            return []
        folder = Path(client.download_artifacts(trial.run.info.run_id, sorted(epochs)[-1], str(out / "best_trial")))
    except (MlflowException, OSError):
        return []
    return sorted(folder.glob("*.png"))


# -- the report ------------------------------------------------------------------------------------
@dataclass
class Report:
    folder: Path
    html: Path
    text: str  # what the terminal shows


def write_report(client: MlflowClient, sweep: Sweep, out: Path, epoch: int | None = None) -> Report:
    """Plots, ``ablation.md`` and a self-contained ``report.html`` (images embedded) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*(out / name for name in PICTURES), *(out / "best_trial").glob("**/*.png")]:
        stale.unlink(missing_ok=True)  # a picture this sweep no longer has must not survive
    notes: list[str] = []
    reached = common_epoch(sweep)
    if epoch is None:
        epoch = reached
        when = _epoch_note(sweep, epoch)
    else:
        missing = [t.name for t in sweep.comparable if t.at(sweep.metric, epoch) is None]
        when = f"epoch {epoch} (chosen); {len(missing)} trial(s) did not reach it and are left out"
    statuses: dict[str, int] = {}
    for t in sweep.trials:
        statuses[t.status] = statuses.get(t.status, 0) + 1
    summary = f"{sweep.name} ({sweep.experiment}): {len(sweep.trials)} trials — " + ", ".join(
        f"{n} {s}" for s, n in sorted(statuses.items())
    )
    comparison = comparison_rows(sweep, epoch)
    ablation = ablation_rows(sweep, epoch)
    (out / "ablation.md").write_text(f"Compared at {when}.\n\n" + markdown_table(*ablation) + "\n")
    base = baselines(client, sweep, out / "baselines.json", notes)
    sections: list[tuple[str, str, list[Path]]] = []
    figure = lambda_plot(sweep, epoch, base, out / "lambda.png")
    sections.append(("Metric vs λ", "" if figure else "λ did not vary in this sweep.", [figure] if figure else []))
    sections.append(("Regulariser ablation", html_table(*ablation), []))
    figure = effects_plot(sweep, epoch, out / "effects.png")
    if figure:
        sections.append(("Views and batch size", "", [figure]))
    sections.append(("Training curves of the top trials", "", [curves_plot(sweep, epoch, out / "curves.png")]))
    found, reason = importances(sweep, epoch)
    pictures = [importance_plot(found, sweep, out / "importance.png")] if found else []
    sections.append(("Parameter importances", reason or html_table(["parameter", "importance"],
                     [[_label(k), f"{v:.3f}"] for k, v in found.items()]), pictures))
    if base:
        rows = [[name, _fmt(v.get("knn_acc")), _fmt(v.get("rankme"), 1)] for name, v in base.items()]
        sections.append(("Baselines", html_table(["baseline", "knn_acc", "rankme"], rows), []))
    best = top_trials(sweep, epoch, 1)
    if best:
        pictures = best_trial_pictures(client, best[0], out)
        if pictures:
            sections.append((f"Best trial {best[0].name}: diagnostics", "", pictures))
    _write_html(out / "report.html", summary, when, comparison, sections, notes)
    text = "\n".join([
        summary, f"compared at {when}", "", text_table(*comparison), "", "regulariser ablation:",
        text_table(*ablation), *([""] + notes if notes else []),
    ])
    return Report(out, out / "report.html", text)


def _write_html(path: Path, summary: str, when: str, comparison: tuple, sections: list, notes: list[str]) -> None:
    def image(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode()
        name = html.escape(p.name)
        return f'<figure><img src="data:image/png;base64,{data}" alt="{name}"><figcaption>{name}</figcaption></figure>'

    body = [f"<h1>{html.escape(summary)}</h1>", f"<p>Trials compared at {html.escape(when)}.</p>",
            "<h2>Trials</h2>", html_table(*comparison)]
    for title, content, pictures in sections:
        body.append(f"<h2>{html.escape(title)}</h2>")
        if content:
            body.append(content if content.startswith("<") else f"<p>{html.escape(content)}</p>")
        body += [image(p) for p in pictures]
    if notes:
        body += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in notes] + ["</ul>"]
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left} img{max-width:100%} figure{margin:1em 0}")
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(summary)}</title>"
                    f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


# -- CSV export ------------------------------------------------------------------------------------
def safe_name(text: str) -> str:
    """A file-name part: no path separators or other surprises."""
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("._") or "_"


def export_csv(trials: list[Trial], folder: Path) -> list[Path]:
    """Every metric curve of ``trials`` as ``<run>__<metric>.csv`` (``step,value``), exactly as logged."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [t.name for t in trials]
    written = []
    for t in trials:
        run = safe_name(t.name if names.count(t.name) == 1 else f"{t.name}-{t.run.info.run_id[:8]}")
        for key in sorted(t.run.data.metrics):
            path = folder / f"{run}__{safe_name(key)}.csv"
            path.write_text("step,value\n" + "".join(f"{s},{v!r}\n" for s, v in t.history(key)))
            written.append(path)
    return written


# -- entry points ----------------------------------------------------------------------------------
def publish_report(client: MlflowClient, parent_run_id: str, out: Path) -> str:
    """Regenerate the report of a sweep that just ended and attach it to its parent run
    (``report/``); returns one line for the runner's summary. Never raises: the sweep is done."""
    try:
        sweep = load_sweep(client, client.get_experiment(client.get_run(parent_run_id).info.experiment_id).name,
                           parent_run_id)
        report = write_report(client, sweep, out)
        client.log_artifacts(parent_run_id, str(out), "report")
    except ReportError as err:
        return f"report:      not written ({err})"
    except Exception as err:  # noqa: BLE001 - a broken plot must not hide the sweep's results
        return f"report:      not written ({type(err).__name__}: {err})"
    return f"report:      {report.html} (also on the parent run under report/)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jepa_sweeps.report", description="Sweep report: comparison table, plots, HTML, CSV export."
    )
    parser.add_argument("target", metavar="EXPERIMENT_OR_SPEC", help="MLflow experiment name or sweep spec YAML")
    parser.add_argument("--out", type=Path, help="report folder (default $JEPA_SWEEPS_HOME/reports/<experiment>)")
    parser.add_argument("--csv", type=Path, metavar="DIR", help="also export every metric curve as step,value CSV")
    parser.add_argument("--run", dest="runs", action="append", default=[], metavar="NAME_OR_ID",
                        help="with --csv: only these runs (repeatable)")
    parser.add_argument("--epoch", type=int, help="compare trials at this epoch instead of the common one")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default as the runner: spec, env, home)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """What the command line names, checked before anything is read or written: a half-written
    report or a client retrying an unreachable server for minutes helps no one. ``ConfigError``."""
    from pydantic import ValidationError

    from jepa_sweeps.config import describe
    from jepa_sweeps.preflight import writable
    from jepa_sweeps.spec import MLflowSpec

    if args.epoch is not None and args.epoch < 1:
        raise ConfigError(f"--epoch {args.epoch}: epochs count from 1")
    for flag, folder in (("--out", args.out), ("--csv", args.csv)):
        if folder is not None:
            problem = f"{folder} is not a folder" if folder.exists() and not folder.is_dir() else writable(folder.resolve())
            if problem:
                raise ConfigError(f"{flag} {folder}: {problem}")
    try:
        MLflowSpec(tracking_uri=args.tracking_uri)
    except ValidationError as err:
        raise ConfigError(describe(err, prefix="--tracking-uri", limit=1)) from None


def check_store(uri: str) -> None:
    """A server answers within ≈10 s, a database URI has its driver and server; each request
    after that is tried once more at most (MLflow's own retries take minutes)."""
    from jepa_sweeps.preflight import check_tracking

    if urlparse(uri).scheme != "sqlite":  # read-only here: open_store checks the file exists
        check_tracking(uri)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def main(argv: list[str] | None = None) -> int:
    from jepa_sweeps.redaction import redact_logs, shorten

    args = parse_args(argv)
    redact_logs()
    try:
        check_args(args)
        uri, experiment = resolve(args.target, args.tracking_uri)
        check_store(uri)
        client = open_store(uri)
        sweep = load_sweep(client, experiment)
    except (ConfigError, ReportError) as err:
        print(f"error: {shorten(' '.join(str(err).split()), 300)}", file=sys.stderr)
        return EXIT_USAGE
    from jepa_sweeps.sweep import home

    out = args.out or home() / "reports" / safe_name(experiment)
    report = write_report(client, sweep, out.resolve(), args.epoch)
    print(report.text)
    if args.csv:
        chosen = [t for t in sweep.trials if not args.runs or {t.name, t.run.info.run_id} & set(args.runs)]
        files = export_csv(chosen, args.csv)
        print(f"\ncsv:    {len(files)} files ({len(chosen)} runs) in {args.csv.resolve()}")
    print(f"report: {report.html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
