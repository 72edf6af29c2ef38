"""The report's PNG plots: metric vs λ, effects of views and batch size, training curves of the
top trials, parameter importances."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jepa_sweeps import names
from jepa_sweeps.evaluation.diagnostics import figure
from jepa_sweeps.report.runs import Sweep
from jepa_sweeps.report.stats import (
    TOP_TRIALS,
    distinct_seeds,
    finished_finals,
    interval,
    lambda_groups,
    top_trials,
)
from jepa_sweeps.report.tables import label

CURVES = ("knn_acc", "inv_loss", "reg_loss")
EFFECTS = {
    "views.n_global": "global views (V_g)", "views.n_local": "local views (V_l)", "optim.batch_size": "batch size",
}
PICTURES = ("lambda.png", "effects.png", "curves.png", "importance.png")


def panels(panels: int, width: float = 5.2, height: float = 4.0) -> tuple[Any, list[Any]]:
    """A figure of ``panels`` axes side by side."""
    fig = figure(figsize=(width * panels, height), layout="constrained")
    return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def save(fig: Any, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=110)
    return path


def lambda_plot(sweep: Sweep, epoch: int, base: dict[str, dict[str, float]], path: Path) -> Path | None:
    """Metric vs λ per regulariser on a symlog axis with λ=0 kept: every distinct seed a dot
    (copies of one configuration and seed are one dot), mean ± 95% t-interval where a configuration
    has ≥ 3 distinct seeds, and beside it the finished trials' values at their own last epoch."""
    trials = sweep.comparable
    lams = sorted({t.lam() for t in trials if t.lam() is not None})
    if len(lams) < 2:
        return None
    logged = {k for t in trials for k in t.run.data.metrics}
    metrics = [sweep.metric] + [m for m in ("knn_acc", "rankme") if m != sweep.metric and m in logged]
    fig, axes = panels(len(metrics))
    regs = sorted({t.params.get(names.REGULARISER_PARAM, "?") for t in trials})
    positive = [lam for lam in lams if lam > 0]
    for ax, metric in zip(axes, metrics):
        for color, reg in enumerate(regs):
            c = f"C{color}"
            mine = [t for t in trials if t.params.get(names.REGULARISER_PARAM, "?") == reg]
            found = lambda_groups(sweep, mine, metric, epoch)
            if all(g.lam is None for g in found):  # no λ (ema): its mean as a level
                values = [p.value for g in found for p in g.points]
                if values:
                    label = f"{reg} (no λ), mean of {len(values)}"
                    ax.axhline(sum(values) / len(values), color=c, ls="--", label=label)
                continue
            drawn = [g for g in found if g.lam is not None]
            xs = [g.lam for g in drawn for _ in g.points]
            ys = [p.value for g in drawn for p in g.points]
            ax.scatter(xs, ys, color=c, alpha=0.45, s=18, lw=0, label=f"{reg}: distinct seeds at epoch {epoch}")
            for g in drawn:
                for p in g.points:
                    if p.copies > 1:
                        ax.annotate(f"×{p.copies} identical", (g.lam, p.value), xytext=(4, -10),
                                    textcoords="offset points", fontsize=7, color=c)
            ax.plot([g.lam for g in drawn], [g.mean for g in drawn], color=c, lw=1, alpha=0.8,
                    label=f"{reg}: mean per configuration")
            with_ci = [g for g in drawn if g.ci is not None]
            if with_ci:
                ax.errorbar([g.lam for g in with_ci], [g.mean for g in with_ci], yerr=[g.ci for g in with_ci],
                            fmt="o", color=c, capsize=4, ms=5, label=f"{reg}: mean ± 95% t-interval (≥3 distinct seeds)")
            finals = [f for f in finished_finals(mine, metric) if f.trial.lam() is not None and f.epoch > epoch]
            if finals:
                last = sorted({f.epoch for f in finals})
                ax.scatter([f.trial.lam() for f in finals], [f.value for f in finals], color=c, marker="^",
                           s=30, facecolors="none", label=f"{reg}: finished, final epoch {'/'.join(map(str, last))}")
        for i, (name, values) in enumerate(base.items()):
            if metric in values:
                ax.axhline(values[metric], color="0.4", ls=[":", "-."][i % 2], lw=1,
                           label=f"{name}: {values[metric]:.3g}")
        log_axis(ax, positive, lams[-1])
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} at epoch {epoch} (dots) and finished trials' final (△)", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{sweep.name}: metric vs λ\n{epoch_note(sweep, epoch)}", fontsize=9)  # one panel is narrow
    return save(fig, path)


def log_axis(ax: Any, positive: list[float], largest: float) -> None:
    """Symlog λ axis: linear below the smallest decade holding a λ > 0 (so λ=0 is drawn), one tick
    per decade above it, labelled as plain numbers: trials' own λs would overprint."""
    from matplotlib.ticker import FuncFormatter, NullLocator, SymmetricalLogLocator

    linthresh = 10.0 ** math.floor(math.log10(positive[0])) if positive else 1.0
    ax.set_xscale("symlog", linthresh=linthresh, linscale=0.5)
    ax.set_xlim(-0.3 * linthresh, largest * 1.6)  # room for the outer error bars
    ax.xaxis.set_major_locator(SymmetricalLogLocator(linthresh=linthresh, base=10))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("λ (symlog axis; λ=0 at the left)")


def epoch_note(sweep: Sweep, epoch: int) -> str:
    return f"epoch {epoch}, the last epoch all {len(sweep.comparable)} finished or stopped trials reached"


def effects_plot(sweep: Sweep, epoch: int, path: Path) -> Path | None:
    """The metric against each of views and batch size that the sweep varied (marginal effects)."""
    trials = [t for t in sweep.comparable if t.at(sweep.metric, epoch) is not None]
    varied = [k for k in EFFECTS if len({t.params[k] for t in trials if k in t.params}) > 1]
    if not varied:
        return None
    fig, axes = panels(len(varied), 4.5, 3.6)
    for ax, key in zip(axes, varied):
        pairs: dict[float, list] = {}
        for t in (t for t in trials if key in t.params):
            pairs.setdefault(float(t.params[key]), []).append((t, t.at(sweep.metric, epoch)))
        by_x = {x: distinct_seeds(sweep, ps) for x, ps in pairs.items()}  # copies are one point
        xs = sorted(by_x)
        for x in xs:
            ax.scatter([x] * len(by_x[x]), [p.value for p in by_x[x]], color="C0", alpha=0.4, s=14, lw=0)
        stats = [interval(by_x[x]) for x in xs]
        ax.plot(xs, [m for m, _ in stats], color="C0", marker="o", label="mean")
        with_ci = [(x, m, ci) for x, (m, ci) in zip(xs, stats) if ci is not None]
        if with_ci:
            ax.errorbar([x for x, _, _ in with_ci], [m for _, m, _ in with_ci], yerr=[c for _, _, c in with_ci],
                        fmt="none", color="C0", capsize=4, label="95% CI (≥3 distinct runs; copies are one)")
        if key == "optim.batch_size":
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(EFFECTS[key])
        ax.set_ylabel(f"{sweep.metric} at epoch {epoch}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{sweep.name}: effect of each varied setting (every trial a dot)", fontsize=10)
    return save(fig, path)


def curves_plot(sweep: Sweep, epoch: int, path: Path) -> Path:
    """Training curves of the top trials, overlaid; the dotted line marks the comparison epoch."""
    fig, axes = panels(len(CURVES), 4.6, 3.6)
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
    return save(fig, path)


def importance_plot(found: dict[str, float], sweep: Sweep, path: Path) -> Path:
    fig, (ax,) = panels(1, 5.5, 0.9 + 0.4 * len(found))
    names = list(found)[::-1]
    ax.barh([label(n) for n in names], [found[n] for n in names], color="C0")
    ax.set_xlabel(f"importance for {sweep.metric} (PED-ANOVA, sums to 1)")
    ax.set_title(f"{sweep.name}: parameter importances", fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return save(fig, path)
