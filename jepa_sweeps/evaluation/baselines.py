"""What self-supervised training has to beat, on a trial's own dataset and eval protocol: kNN
accuracy and RankMe of raw pixels and of the trial's encoder at random initialisation."""

from __future__ import annotations

from typing import Any

from jepa_sweeps.config import TrialConfig
from jepa_sweeps.data.datasets import load_dataset
from jepa_sweeps.data.views import resize_normalise
from jepa_sweeps.evaluation.probes import embed, knn_accuracy, rankme
from jepa_sweeps.models.lejepa import build_model


def compute_baselines(cfg: TrialConfig) -> dict[str, dict[str, float]]:
    """kNN accuracy and RankMe of raw pixels and of the trial's encoder at random init, on the
    trial's dataset and eval protocol: what SSL has to beat, and what collapse falls below."""
    data = load_dataset(cfg.data.name, cfg.data.path, cfg.data.image_size)

    def prepare(x: Any) -> Any:
        return resize_normalise(x, cfg.global_size, data.mean, data.std)

    def scores(train: Any, test: Any) -> dict[str, float]:
        knn = knn_accuracy(train, data.train_labels, test, data.test_labels, cfg.eval.knn_k, cfg.eval.knn_temperature)
        return {"knn_acc": knn, "rankme": rankme(test)}

    backbone = build_model(cfg, data).backbone
    pixels = [prepare(x).flatten(1) for x in (data.train_images, data.test_images)]
    features = [embed(backbone, x, prepare) for x in (data.train_images, data.test_images)]
    return {"raw pixels": scores(*pixels), f"random-init {cfg.encoder.name}": scores(*features)}
