"""The report of a sweep from its parts: tables, plots, baselines, HTML; and attaching it to the
sweep's parent run when a sweep ends."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from jepa_sweeps import names
from jepa_sweeps.evaluation.baselines import compute_baselines
from jepa_sweeps.report.page import write_html
from jepa_sweeps.report.plots import (
    PICTURES,
    curves_plot,
    effects_plot,
    epoch_note,
    importance_plot,
    lambda_plot,
)
from jepa_sweeps.report.runs import (
    ReportError,
    Sweep,
    best_trial_pictures,
    common_epoch,
    load_sweep,
    stored_config,
)
from jepa_sweeps.report.stats import importances, top_trials
from jepa_sweeps.report.tables import (
    ablation_rows,
    comparison_rows,
    fmt,
    html_table,
    label,
    label_free_rows,
    markdown_table,
    text_table,
)


def sweep_baselines(client: MlflowClient, sweep: Sweep, cache: Path, notes: list[str]) -> dict[str, dict[str, float]]:
    """Baselines of each dataset/encoder the sweep used, cached in ``cache`` (JSON) across reports."""
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    out: dict[str, dict[str, float]] = {}
    seen: set[str] = set()
    for trial in sweep.comparable:
        group = json.dumps({k: v for k, v in sorted(trial.params.items()) if k.startswith(("data.", "encoder."))})
        if group in seen:
            continue
        seen.add(group)
        cfg = stored_config(client, trial)
        if cfg is None:
            notes.append(f"baselines: no {names.CONFIG_ARTIFACT} on {trial.name}")
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
        when = epoch_note(sweep, epoch)
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
    base = sweep_baselines(client, sweep, out / "baselines.json", notes)
    sections: list[tuple[str, str, list[Path]]] = []
    figure = lambda_plot(sweep, epoch, base, out / "lambda.png")
    sections.append(("Metric vs λ", "" if figure else "λ did not vary in this sweep.", [figure] if figure else []))
    sections.append(("Regulariser ablation", html_table(*ablation), []))
    free_header, free_rows, free_skipped = label_free_rows(sweep)
    free_text = "; ".join(free_skipped)
    sections.append(("Label-free scores against final linear accuracy (finished trials)",
                     (html_table(free_header, free_rows) if free_rows else "") + (f"<p>{html.escape(free_text)}</p>"
                     if free_rows and free_text else free_text), []))
    figure = effects_plot(sweep, epoch, out / "effects.png")
    if figure:
        sections.append(("Views and batch size", "", [figure]))
    sections.append(("Training curves of the top trials", "", [curves_plot(sweep, epoch, out / "curves.png")]))
    found, reason = importances(sweep, epoch)
    pictures = [importance_plot(found, sweep, out / "importance.png")] if found else []
    sections.append(("Parameter importances", reason or html_table(["parameter", "importance"],
                     [[label(k), f"{v:.3f}"] for k, v in found.items()]), pictures))
    if base:
        rows = [[name, fmt(v.get("knn_acc")), fmt(v.get("rankme"), 1)] for name, v in base.items()]
        sections.append(("Baselines", html_table(["baseline", "knn_acc", "rankme"], rows), []))
    best = top_trials(sweep, epoch, 1)
    if best:
        pictures = best_trial_pictures(client, best[0], out)
        if pictures:
            sections.append((f"Best trial {best[0].name}: diagnostics", "", pictures))
    write_html(out / "report.html", summary, when, comparison, sections, notes)
    text = "\n".join([
        summary, f"compared at {when}", "", text_table(*comparison), "", "regulariser ablation:",
        text_table(*ablation), "", "label-free scores vs final linear accuracy (finished trials):",
        *([text_table(free_header, free_rows)] if free_rows else []), *free_skipped, *([""] + notes if notes else []),
    ])
    return Report(out, out / "report.html", text)


def publish_report(client: MlflowClient, parent_run_id: str, out: Path) -> str:
    """Regenerate the report of a sweep that just ended and attach it to its parent run
    (``report/``); returns one line for the runner's summary. Never raises: the sweep is done."""
    try:
        sweep = load_sweep(client, client.get_experiment(client.get_run(parent_run_id).info.experiment_id).name,
                           parent_run_id)
        report = write_report(client, sweep, out)
        client.log_artifacts(parent_run_id, str(out), names.REPORT_ARTIFACT)
    except ReportError as err:
        return f"report:      not written ({err})"
    except Exception as err:  # noqa: BLE001 - a broken plot must not hide the sweep's results
        return f"report:      not written ({type(err).__name__}: {err})"
    return f"report:      {report.html} (also on the parent run under report/)"
