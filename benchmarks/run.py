"""``python -m benchmarks.run [--quick] [--only ROW ...] [--out FILE] | --markdown``

Runs the benchmark rows, prints measured value, target and pass/fail, and writes
``benchmarks/results.json`` (rows of earlier runs that ``--only`` skipped are kept, each with its
own date). ``--markdown`` prints the saved results as the table the README shows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from benchmarks.common import Row, load_average, machine_info

RESULTS = Path(__file__).resolve().parent / "results.json"
ROWS = ("1", "2", "3", "4", "5", "6", "7")

# Sizes of each measurement: the full run (≈20 min on 2 idle cores) and --quick.
FULL = {
    "overhead": {"epochs": 8, "rounds": 4, "baseline_after": True},
    "pipeline": {"batch": 256, "batches": 6, "reps": 10},
    "step": {"nano_batch": 128, "nano_reps": 3, "cnn_reps": 20, "objective_reps": 20, "matmul_n": 4096},
    "sweeps": {"seeds": 20},
    "precision": {"batch": 128, "cuda_batch": 512, "reps": 3},
    "makespan": {"overrides": ()},
}
QUICK = {
    "overhead": {"epochs": 3, "rounds": 1, "baseline_after": False},
    "pipeline": {"batch": 256, "batches": 2, "reps": 3},
    "step": {"nano_batch": 16, "nano_reps": 2, "cnn_reps": 5, "objective_reps": 5, "matmul_n": 2048},
    "sweeps": {"seeds": 4},
    "precision": {"batch": 16, "cuda_batch": 64, "reps": 2},
    "makespan": {"overrides": ("num_samples=3", "epochs=2")},
}
# Which measurement produces which rows (one measurement can feed several rows).
GROUPS = {
    "overhead": {"1", "6"}, "pipeline": {"2"}, "step": {"2", "3", "4"}, "sweeps": {"5"}, "makespan": {"7"},
    "precision": {"8"},
}


def measure(group: str, sizes: dict[str, Any], workdir: Path) -> list[Row]:
    """The rows of one measurement; ``workdir`` is its own scratch folder."""
    workdir.mkdir(parents=True)
    if group == "overhead":
        from benchmarks.overhead import overhead_rows

        return overhead_rows(workdir=workdir, **sizes)
    if group == "pipeline":
        from benchmarks.pipeline import pipeline_row

        return [pipeline_row(**sizes)]
    if group == "step":
        from benchmarks.step import step_rows

        return step_rows(**sizes)
    if group == "precision":
        from benchmarks.precision import precision_row

        return [precision_row(**sizes)]
    if group == "makespan":
        from benchmarks.makespan import makespan_row

        return [makespan_row(workdir=workdir, **sizes)]
    from benchmarks.sweeps import sweep_row

    return [sweep_row(workdir=workdir, **sizes)]


def run(only: set[str], sizes: dict[str, dict[str, Any]], progress: Callable[[str], None] = print) -> list[Row]:
    """Every measurement feeding a row in ``only``, in a scratch folder that also holds the
    runner's home (MLflow stores, Ray storage): nothing lands in ``~/.jepa_sweeps``."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="jepa-bench-") as tmp:
        previous = os.environ.get("JEPA_SWEEPS_HOME")
        os.environ["JEPA_SWEEPS_HOME"] = tmp
        try:
            for group, feeds in GROUPS.items():
                if feeds & only:
                    started = time.perf_counter()
                    progress(f"[{group}] measuring rows {', '.join(sorted(feeds & only))} ...")
                    rows += [r for r in measure(group, sizes[group], Path(tmp, group)) if r.id[0] in only]
                    progress(f"[{group}] done in {time.perf_counter() - started:.0f} s")
        finally:
            if previous is None:
                os.environ.pop("JEPA_SWEEPS_HOME", None)
            else:
                os.environ["JEPA_SWEEPS_HOME"] = previous
    return sorted(rows, key=lambda r: r.id)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'row':<4} {'benchmark':<54} {'measured':>22} {'target':>14}  result"]
    for r in rows:
        lines.append(f"{r['id']:<4} {r['name']:<54} {r['shown']:>22} {r['target']:>14}  {verdict(r)}")
        lines += [f"{'':<9}{note}" for note in r["notes"]]
    return "\n".join(lines)


def verdict(row: dict[str, Any]) -> str:
    return "-" if row["passed"] is None else ("pass" if row["passed"] else "FAIL")


def markdown(saved: dict[str, Any]) -> str:
    m = saved["machine"]
    lines = [
        f"Latest run: {saved['date']} on {m['cpu']}, {m['cores']} cores, torch {m['torch']}, ray {m['ray']} "
        f"(`python -m benchmarks.run`; details in `benchmarks/results.json`).",
        "",
        "| row | benchmark | measured | target | result | run |",
        "|---|---|---|---|---|---|",
    ]
    for r in saved["rows"]:
        lines.append(f"| {r['id']} | {r['name']} | {r['shown']} | {r['target']} | {verdict(r)} | "
                     f"{r['date'][:10]} {r['mode']}, load {r['load_average'][0]} |")
    return "\n".join(lines)


def save(rows: list[Row], mode: str, runtime: float, load: list[float], out: Path) -> dict[str, Any]:
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    saved = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    fresh = [{**asdict(r), "date": date, "mode": mode, "load_average": load} for r in rows]
    kept = [r for r in saved["rows"] if r["id"][0] not in {row.id[0] for row in rows}]
    saved.update(date=date, machine=machine_info(), runtime_s=round(runtime), load_average_at_start=load,
                 rows=sorted(kept + fresh, key=lambda r: r["id"]))
    out.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description="Run the benchmark rows, print the table, write results.json.")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes; noisier)")
    parser.add_argument("--only", nargs="+", choices=ROWS, default=list(ROWS), metavar="ROW",
                        help="rows to run (1-7); shared measurements run once")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    parser.add_argument("--markdown", action="store_true", help="print the saved results as a Markdown table")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.out.read_text())))
        return 0
    load = load_average()
    if load[0] > (os.cpu_count() or 1):
        print(f"warning: load average {load[0]} on {os.cpu_count()} cores: timings will be contended", flush=True)
    started = time.perf_counter()
    rows = run(set(args.only), QUICK if args.quick else FULL, progress=lambda s: print(s, flush=True))
    saved = save(rows, "quick" if args.quick else "full", time.perf_counter() - started, load, args.out)
    fresh = [r for r in saved["rows"] if r["id"] in {row.id for row in rows}]
    print(f"\n{table(fresh)}\n\n{len(fresh)} rows in {saved['runtime_s']} s; written to {args.out}")
    return 0 if all(r.passed is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
