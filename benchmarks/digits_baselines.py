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
from jepa_sweeps.data.datasets import load_dataset
from jepa_sweeps.data.views import resize_normalise
from jepa_sweeps.evaluation.probes import embed, knn_accuracy, rankme
from jepa_sweeps.train import LocalHooks, build_model, train


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lams", type=float, nargs="+", default=[0.0, 0.05, 0.5])
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    base = {"epochs": args.epochs, "optim": {"batch_size": 64, "lr": 2e-3}, "eval": {"every": 5}}
    data = load_dataset("digits")

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return resize_normalise(x, data.image_size, data.mean, data.std)

    rows = []
    pixels_train, pixels_test = prepare(data.train_images).flatten(1), prepare(data.test_images).flatten(1)
    rows.append(("raw pixels", knn_accuracy(pixels_train, data.train_labels, pixels_test, data.test_labels),
                 float("nan"), rankme(pixels_test), 0.0))
    model = build_model(trial_config(base), data)
    train_f, test_f = embed(model.backbone, data.train_images, prepare), embed(model.backbone, data.test_images, prepare)
    rows.append(("random-init CNN", knn_accuracy(train_f, data.train_labels, test_f, data.test_labels),
                 float("nan"), rankme(test_f), 0.0))
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
