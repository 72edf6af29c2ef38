"""The comparison and ablation tables, as terminal text, Markdown and HTML."""

from __future__ import annotations

import html
import math
import statistics

from jepa_sweeps import names
from jepa_sweeps.report.runs import Sweep, Trial
from jepa_sweeps.report.stats import (
    copies_note,
    distinct_seeds,
    groups,
    interval,
    label_free,
)

LABELS = {"objective.lam": "λ", "objective.name": "regulariser", "views.n_global": "V_g", "views.n_local": "V_l",
          "optim.batch_size": "batch"}
EXTRA_COLUMNS = ("linear_acc", "rankme", "knn_acc_2x", "attn_entropy", "attn_head_similarity")


def label(key: str) -> str:
    return LABELS.get(key, key)


def config_label(key: tuple[tuple[str, str], ...], skip: tuple[str, ...] = ()) -> str:
    parts = [f"{LABELS.get(k, k)}={short(v)}" for k, v in key if k not in skip]
    return ", ".join(parts) or "(fixed config)"


def short(value: str) -> str:
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def comparison_rows(sweep: Sweep, epoch: int) -> tuple[list[str], list[list[str]]]:
    """One row per trial, best first at ``epoch``; trials without a value there last."""
    extra = [k for k in EXTRA_COLUMNS if k != sweep.metric and any(k in t.run.data.metrics for t in sweep.trials)]
    searched = sweep.searched
    header = ["run", "status", "epochs", f"{sweep.metric}@{epoch}", f"{sweep.metric} final (finished)", *extra,
              "final_linear_acc"] + [label(k) for k in searched]

    def score(t: Trial) -> float:
        value = t.at(sweep.metric, epoch) if t.status in names.COMPARABLE else None
        return math.inf if value is None else sweep.sign() * value

    rows = []
    for t in sorted(sweep.trials, key=score):
        at = t.status in names.COMPARABLE
        rows.append(
            [t.name, t.status, str(t.last_epoch(sweep.metric) or 0), fmt(t.at(sweep.metric, epoch) if at else None),
             final_cell(t, sweep.metric)]
            + [fmt(t.at(k, epoch) if at else None, 2 if k == "rankme" else 4) for k in extra]
            + [fmt(t.run.data.metrics.get("final_linear_acc"))]
            + [short(t.params.get(k, "–")) for k in searched]
        )
    return header, rows


def final_cell(t: Trial, metric: str) -> str:
    """A finished trial's value at its own last epoch, e.g. "0.9830 @5"."""
    points = t.history(metric)
    return f"{points[-1][1]:.4f} @{points[-1][0]}" if t.status == names.FINISHED and points else "–"


def ablation_rows(sweep: Sweep, epoch: int) -> tuple[list[str], list[list[str]]]:
    """Per regulariser: its best configuration (by mean over seeds) and the spread of all trials."""
    header = ["regulariser", "trials", "best config", f"{sweep.metric}@{epoch} (mean ± 95% CI)", "distinct seeds",
              "median of all", "rankme (best)"]
    by_reg: dict[str, list[Trial]] = {}
    for t in sweep.comparable:
        by_reg.setdefault(t.params.get(names.REGULARISER_PARAM, "?"), []).append(t)
    rows = []
    for reg, trials in sorted(by_reg.items()):
        grouped = groups(sweep, trials, epoch)
        if not grouped:
            continue
        points = {k: distinct_seeds(sweep, g) for k, g in grouped.items()}
        stats = {k: interval(p) for k, p in points.items()}
        best = min(grouped, key=lambda k: sweep.sign() * stats[k][0])
        mean, ci = stats[best]
        note = copies_note(points[best])
        median = statistics.median(v for g in grouped.values() for _, v in g)
        ranks = [t.at("rankme", epoch) for t, _ in grouped[best]]
        ranks = [r for r in ranks if r is not None]
        rows.append([
            reg, str(len(trials)), config_label(best, skip=("objective.name",)),
            fmt(mean) + (f" ± {ci:.4f}" if ci is not None else ""), str(len(points[best])) + (f" ({note})" if note else ""),
            fmt(median), fmt(sum(ranks) / len(ranks), 1) if ranks else "–",
        ])
    return header, rows


def label_free_rows(sweep: Sweep) -> tuple[list[str], list[list[str]], list[str]]:
    """The label-free section: each score's Spearman ρ with final linear accuracy over the finished
    trials and the accuracy of the trial it would pick; plus one line per skipped score."""
    checks, skipped = label_free(sweep)
    header = ["score", "better", "finished trials", "Spearman ρ (95% bootstrap CI)", "picks", "its accuracy",
              "best accuracy", "regret"]
    rows = [[c.score, c.better, str(c.trials), f"{c.rho:+.3f} [{c.low:+.3f}, {c.high:+.3f}]", c.picked.name,
             fmt(c.picked_acc), fmt(c.best_acc), fmt(c.best_acc - c.picked_acc)] for c in checks]
    return header, rows, skipped


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
