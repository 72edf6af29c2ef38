"""The report's PNG plots: metric vs λ, effects of views and batch size, training curves of the
top trials, parameter importances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jepa_sweeps import names
from jepa_sweeps.evaluation.diagnostics import figure
from jepa_sweeps.report.runs import Sweep
from jepa_sweeps.report.stats import TOP_TRIALS, mean_interval, top_trials
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
    """Metric vs λ per regulariser on a symlog axis (λ=0 a decade left of the smallest λ > 0);
    every trial a dot, mean ± 95% t-interval where a configuration has ≥ 3 seeds."""
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
    fig.suptitle(f"{sweep.name}: metric vs λ — {epoch_note(sweep, epoch)}", fontsize=10)
    return save(fig, path)


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
