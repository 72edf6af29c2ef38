"""Digits reference points: raw pixels, a random-init encoder, and SIGReg trials at λ = 0, 0.05, 0.5.

``python -m benchmarks.digits_baselines [--epochs 20]`` — plain process, no Ray. Shows what the
embedded default dataset can and cannot show: the λ trade-off (collapse at λ=0), not SSL beating
raw pixels (≈97% kNN on 8×8 digits).
"""

from __future__ import annotations

import argparse
import time

import torch

from jepa_sweeps.config import trial_config
from jepa_sweeps.evaluation.baselines import compute_baselines
from jepa_sweeps.train import LocalHooks, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.05, 0.5])
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    base = {"epochs": args.epochs, "optim": {"batch_size": 64, "lr": 2e-3}, "eval": {"every": 5}}
    rows = [(name, found["knn_acc"], float("nan"), found["rankme"], 0.0)
            for name, found in compute_baselines(trial_config(base)).items()]
    for lam in args.lams:
        cfg = trial_config({**base, "objective": {"name": "sigreg", "lam": lam}})
        started = time.perf_counter()
        final = train(cfg, LocalHooks())
        rows.append((f"sigreg λ={lam:g}", final["knn_acc"], final.get("final_linear_acc", float("nan")),
                     final["rankme"], time.perf_counter() - started))
        print(f"  done: sigreg λ={lam:g} in {rows[-1][4]:.0f} s", flush=True)
    print(f"\n{'':<18} {'kNN':>6} {'linear':>7} {'RankMe':>7} {'train s':>8}   ({args.epochs} epochs, digits)")
    for name, knn, linear, rank, seconds in rows:
        print(f"{name:<18} {knn:>6.3f} {linear:>7.3f} {rank:>7.1f} {seconds:>8.0f}")


if __name__ == "__main__":
    main()
