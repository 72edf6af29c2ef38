"""``python -m benchmarks.search_table [--jobs 2] [--out FILE]``: the dense λ table of row 5.

Trains the main job's trial config (``search_spaces/lambda.yaml``'s ``trial:`` block: digits CNN,
10 epochs, final probe) for λ ∈ {0} ∪ 16 log-spaced values in [1e-3, 0.9] × seeds 0, 1, 2, each as
one plain process calling ``train`` with ``LocalHooks`` (one process trains exactly as the DDP
trial does: every cross-sample statistic is taken on the global batch). Every epoch's reported
metrics and its measured seconds (report to report; the first epoch includes model and data
set-up) become one CSV row. The first line names the command and the commit.

Resumable: each finished trial is appended at once, and trials already in the file are skipped,
so an interruption loses at most the trials in flight.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
TABLE = DATA / "lambda_table.csv"
SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "lambda.yaml"
LAMBDAS = [0.0] + [float(f"{v:.6g}") for v in np.geomspace(1e-3, 0.9, 16)]
SEEDS = (0, 1, 2)
# Fixed leading columns; the metric columns follow in the order the file's header gives them.
KEYS = ["lam", "seed", "epoch", "seconds"]
METRICS = [
    "knn_acc", "linear_acc", "final_linear_acc", "rankme", "sel_loss", "sel_loss_scaled", "isotropy",
    "loss", "inv_loss", "reg_loss", "probe_loss", "val_loss", "val_inv_loss", "val_reg_loss", "z_std",
    "images_per_s", "lr", "diverged",
]


class TimedHooks:
    """``LocalHooks`` plus the wall time of every report (an epoch's training + evaluation)."""

    def __init__(self) -> None:
        from jepa_sweeps.train import LocalHooks

        self.inner = LocalHooks()
        self.device = self.inner.device
        self.started = time.perf_counter()
        self.rows: list[dict[str, Any]] = []

    def prepare_model(self, model: Any) -> Any:
        return self.inner.prepare_model(model)

    def load_checkpoint(self) -> None:
        return None

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        now = time.perf_counter()
        self.rows.append({**metrics, "seconds": now - self.started})
        self.started = now


def train_one(job: tuple[float, int, int]) -> list[dict[str, Any]]:
    """One trial as a plain single process: the lambda.yaml trial at ``lam``/``seed``."""
    import torch

    from jepa_sweeps.spec import load_spec
    from jepa_sweeps.train import train

    lam, seed, threads = job
    torch.set_num_threads(threads)
    cfg = load_spec(SPEC).trial_for({"objective.lam": lam, "seed": seed, "workers": 1, "threads": threads})
    hooks = TimedHooks()
    train(cfg, hooks)
    return [{"lam": lam, "seed": seed, **{k: r.get(k, "") for k in ["epoch", "seconds", *METRICS]}} for r in hooks.rows]


def commit() -> str:
    here = Path(__file__).resolve().parents[1]
    out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "jepa_sweeps"], capture_output=True, text=True)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def done(path: Path) -> set[tuple[float, int]]:
    """(λ, seed) pairs already in the table."""
    if not path.exists():
        return set()
    rows = csv.DictReader(line for line in path.open() if not line.startswith("#"))
    return {(float(r["lam"]), int(r["seed"])) for r in rows}


def append(path: Path, rows: list[dict[str, Any]], header: str) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        if new:
            f.write(header + "\n")
        writer = csv.DictWriter(f, fieldnames=KEYS + [m for m in METRICS], extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="trials in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    parser.add_argument("--out", type=Path, default=TABLE)
    parser.add_argument("--limit", type=int, default=0, help="train at most this many missing trials (0: all)")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    have = done(args.out)
    todo = [(lam, seed, args.threads) for seed in SEEDS for lam in LAMBDAS if (lam, seed) not in have]
    if args.limit:
        todo = todo[: args.limit]
    header = f"# command: python -m benchmarks.search_table {' '.join(sys.argv[1:])}; commit: {commit()}; " \
             f"trial: {SPEC.name} trial block, 1 process x {args.threads} thread(s), {args.jobs} in parallel"
    print(f"{len(have)} trials in {args.out}, {len(todo)} to train", flush=True)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.jobs, maxtasksperchild=1) as pool:
        for rows in pool.imap_unordered(train_one, todo):
            append(args.out, rows, header)
            last = rows[-1]
            print(f"λ={last['lam']:g} seed={last['seed']}: final_linear_acc={last['final_linear_acc']} "
                  f"{sum(r['seconds'] for r in rows):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
