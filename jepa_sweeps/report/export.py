"""Every metric curve of chosen trials as ``step,value`` CSV files."""

from __future__ import annotations

from pathlib import Path

from jepa_sweeps.report.runs import Trial
from jepa_sweeps.storage import safe_name


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
