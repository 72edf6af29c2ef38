"""Row 5: how much compute the product's default search needs to find a good λ, against the grid.

Replays the committed dense λ table (``benchmarks/data/lambda_table.csv``, made by
``python -m benchmarks.search_table``) through the real ``Search``/TPE and ``ASHAScheduler``
objects (``benchmarks.search``): the median over search seeds of the epochs TPE + ASHA, configured
as ``search_spaces/lambda.yaml`` configures them, trains at 4 concurrent trial slots until its
chosen configuration stays within 0.5 points of the grid's best, ÷ the full grid's epochs.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import Row
from benchmarks.search import TABLE, replay

DEFAULT = "TPE + ASHA (default)"


def sweep_row(seeds: int, workdir: Path, table: Path = TABLE, jobs: int = 2) -> Row:
    summary, _ = replay(table, seeds, [1, 4], None, 20.0, jobs, workdir)
    return search_row(summary, seeds)


def search_row(summary: dict, seeds: int) -> Row:
    four, one = summary[f"{DEFAULT} @4"], summary[f"{DEFAULT} @1"]
    grid = summary["grid_epochs"]
    ratio = float(four["ratio"])
    notes = [
        f"{seeds} search seeds; full grid {grid} epochs; at 4 slots TPE + ASHA reached the target in "
        f"{four['reached']}/{seeds} seeds (median {four['epochs_median']:.0f} epochs, {four['epochs_used']:.0f} used "
        f"in all); at 1 slot median {one['epochs_median']:.0f} epochs = {one['ratio']:.2f}× the grid",
    ]
    return Row("5", "search: epochs to ≤0.5 pt of grid's best ÷ grid (4 slots)", f"{ratio:.2f}", "≤ 0.3",
               ratio <= 0.3, ratio, {"summary": summary, "seeds": seeds}, notes)
