"""Search economy: label-free selection scores, no configuration trained twice, the replay harness."""

from __future__ import annotations

import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from jepa_sweeps.evaluation.selection import isotropy, scaled_loss, selection_scores
from jepa_sweeps.spec import SweepSpec
from jepa_sweeps.storage import TUNE_FOLDER
from jepa_sweeps.sweep import Search, searcher

ROOT = Path(__file__).resolve().parents[1]


# --- label-free scores ----------------------------------------------------------------------------

def test_isotropy_separates_gaussian_from_collapsed_and_correlated_embeddings() -> None:
    gen = torch.Generator().manual_seed(0)
    gaussian = torch.randn(2000, 32, generator=gen)
    collapsed = torch.randn(2000, 1, generator=gen) * torch.randn(1, 32, generator=gen)  # rank 1
    mixed = gaussian.clone()
    mixed[:, 16:] = mixed[:, :16]  # half the dimensions copies of the others
    iso = [isotropy(x) for x in (gaussian, mixed, collapsed)]
    assert iso[0] < 2 < iso[1] < iso[2]  # lower = more isotropic
    assert isotropy(gaussian * 7 + 3) == pytest.approx(iso[0], rel=1e-6)  # standardised: scale-free


def test_scaled_loss_is_undefined_without_a_positive_lambda() -> None:
    assert scaled_loss(0.5, 0.1, 0.4) == pytest.approx(0.5 / 0.1**0.4)
    assert math.isnan(scaled_loss(0.5, 0.0, 0.4)) and math.isnan(scaled_loss(0.5, None, 0.4))
    scores = selection_scores(0.5, 0.25, 1.0, torch.randn(100, 8))
    assert scores["sel_loss"] == 0.5 and scores["sel_loss_scaled"] == pytest.approx(2.0)


@pytest.mark.slow
def test_every_evaluation_logs_the_selection_scores() -> None:
    from jepa_sweeps.config import TrialConfig
    from jepa_sweeps.train import LocalHooks, train

    cfg = TrialConfig.model_validate({
        "epochs": 2, "optim": {"batch_size": 64}, "views": {"n_global": 2, "n_local": 0},
        "eval": {"final_probe_epochs": 0, "selection_alpha": 0.5}, "objective": {"name": "sigreg", "lam": 0.25},
        "threads": 1,
    })
    hooks = LocalHooks()
    train(cfg, hooks)
    for report in hooks.reports:
        assert report["sel_loss"] == report["val_loss"]
        assert report["sel_loss_scaled"] == pytest.approx(report["val_loss"] / 0.25**0.5)
        assert math.isfinite(report["isotropy"]) and report["isotropy"] > 0


# --- no configuration twice -----------------------------------------------------------------------

def _two_value_spec(**extra: object) -> SweepSpec:
    return SweepSpec.model_validate({
        "name": "repeats", "trial": {"epochs": 1}, "search": {"objective.lam": {"choice": [0.02, 0.2]}},
        "points": [{"objective.lam": 0.02}], "num_samples": 5, "metric": "knn_acc", "mode": "max", **extra,
    })


def test_search_answers_repeats_with_the_earlier_result_and_waits_for_running_ones(tmp_path: Path) -> None:
    search = searcher(_two_value_spec())
    heard: list[tuple[str, int]] = []
    search.on_repeat = lambda trial_id, count: heard.append((trial_id, count))
    first, second = search.suggest("a"), search.suggest("b")
    assert {first["objective.lam"], second["objective.lam"]} == {0.02, 0.2}
    assert search.suggest("c") is None  # any third suggestion repeats a running trial: wait
    search.on_trial_complete("a", {"knn_acc": 0.5, "epoch": 1})
    search.on_trial_complete("b", {"knn_acc": 0.7, "epoch": 1})
    assert search.suggest("c") == Search.FINISHED  # 5 suggestions, all answered, 2 trials trained
    study = search._ot_study.trials
    assert len(study) == 5 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study)
    by_lam = {0.02: 0.5, 0.2: 0.7} if first["objective.lam"] == 0.02 else {0.02: 0.7, 0.2: 0.5}
    assert all(t.value == by_lam[t.params["objective.lam"]] for t in study)
    assert sum(search.repeats.values()) == 3 and len(heard) == 3
    restored = pickle.loads(pickle.dumps(search))  # the Tuner pickles it whole (tuner.pkl)
    assert restored.on_repeat is None and restored.repeats == search.repeats
    search.save(str(tmp_path / "searcher.pkl"))  # Tune's experiment checkpoint, then Tuner.restore
    fresh = Search()
    fresh.restore(str(tmp_path / "searcher.pkl"))
    assert fresh.repeats == search.repeats and fresh.results == search.results and fresh.on_repeat is None


def test_a_failed_trial_may_be_trained_again() -> None:
    search = searcher(_two_value_spec(num_samples=3))
    first = search.suggest("a")
    search.on_trial_complete("a", None, error=True)
    seen = [search.suggest(t) for t in "bc"]
    assert first in seen  # not answered from a failure


@pytest.mark.slow
def test_sweep_trains_a_repeated_suggestion_once(tmp_path: Path) -> None:
    """TPE over two values with 4 samples must repeat: two child runs, the repeats answered by them."""
    from mlflow.tracking import MlflowClient

    from jepa_sweeps.tracking import REPEATS_TAG

    spec = tmp_path / "repeats.yaml"
    spec.write_text(
        "name: repeats\n"
        "trial: {epochs: 2, optim: {batch_size: 64}, views: {n_global: 2, n_local: 0}, eval: {final_probe_epochs: 0}}\n"
        "search: {objective.lam: {choice: [0.02, 0.2]}}\n"
        "num_samples: 4\nscheduler: {name: fifo}\n"
        "resources: {workers: 1, cpus_per_worker: 1, driver_cpus: 0.5, max_concurrent_trials: 2}\n"
    )
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(JEPA_SWEEPS_HOME=str(home), RAY_AUTH_MODE="disabled")
    done = subprocess.run([sys.executable, "-m", "jepa_sweeps.run", str(spec)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("repeats")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    lams = sorted(float(r.data.params["lambda"]) for r in runs)
    assert lams == [0.02, 0.2]  # each configuration trained once
    assert sum(int(r.data.tags.get(REPEATS_TAG, 0)) for r in runs) == 2
    search = Search()
    search.restore_from_dir(str(home / "ray_results" / "repeats" / TUNE_FOLDER))
    trials = search._ot_study.trials
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    knn = {float(r.data.params["lambda"]): r.data.metrics["knn_acc"] for r in runs}
    assert all(t.value == pytest.approx(knn[t.params["objective.lam"]]) for t in trials)


# --- the replay harness ---------------------------------------------------------------------------

@pytest.mark.slow
def test_replay_harness_runs_the_real_searchers_on_a_small_table(tmp_path: Path) -> None:
    """Three λ × 2 seeds × 3 epochs written by the table script's own code path, then replayed."""
    from benchmarks import search, search_table

    table = tmp_path / "table.csv"
    rows = []
    for lam in (0.0, 0.01, 0.3):
        for seed in (0, 1):
            for epoch in (1, 2, 3):
                acc = 0.9 + 0.05 * (lam == 0.01) + 0.01 * seed + 0.001 * epoch
                rows.append({"lam": lam, "seed": seed, "epoch": epoch, "seconds": 1.0 + lam, "knn_acc": acc,
                             "final_linear_acc": acc if epoch == 3 else "", "rankme": 10 * acc,
                             "sel_loss": 1 - acc, "sel_loss_scaled": (1 - acc) / lam**0.4 if lam else "",
                             "isotropy": 2 - acc})
    search_table.append(table, rows, "# command: test")
    assert search.main(["--table", str(table), "--seeds", "2", "--slots", "1", "2", "--jobs", "1",
                        "--out", str(tmp_path)]) == 0
    text = (tmp_path / "search_results.md").read_text()
    assert "TPE + ASHA (default) | 2 |" in text and (tmp_path / "search_curves.png").stat().st_size > 1000


# --- unlabelled data ------------------------------------------------------------------------------

def _flat_folder(root: Path, n: int = 80, size: int = 16) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        pixels = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(root / f"img_{i:03d}.png")
    return root


def test_a_flat_image_folder_is_unlabelled_with_a_held_out_tenth(tmp_path: Path) -> None:
    from jepa_sweeps.data.datasets import load_dataset

    ds = load_dataset("imagefolder", _flat_folder(tmp_path / "flat"), image_size=8)
    assert not ds.labelled and ds.num_classes == 0
    assert (len(ds.train_images), len(ds.test_images)) == (72, 8)
    assert bool((ds.train_labels == -1).all())
    assert not load_dataset("digits", labels=False).labelled


def test_unlabelled_training_reports_label_free_scores_only(tmp_path: Path) -> None:
    from jepa_sweeps.config import TrialConfig
    from jepa_sweeps.train import LocalHooks, train

    cfg = TrialConfig.model_validate({
        "epochs": 1, "data": {"name": "imagefolder", "path": str(_flat_folder(tmp_path / "flat")), "image_size": 8},
        "optim": {"batch_size": 16}, "views": {"n_global": 2, "n_local": 0, "global_size": 8},
        "eval": {"final_probe_epochs": 10}, "threads": 1,
    })
    hooks = LocalHooks()
    last = train(cfg, hooks)
    assert {"sel_loss", "sel_loss_scaled", "rankme", "isotropy"} <= set(last)
    assert not {"knn_acc", "linear_acc", "final_linear_acc", "probe_loss"} & set(last)


@pytest.mark.slow
def test_smoke_sweep_on_unlabelled_images_picks_by_a_label_free_score(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    folder = _flat_folder(tmp_path / "flat", n=120)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(JEPA_SWEEPS_HOME=str(home), RAY_AUTH_MODE="disabled")
    command = [sys.executable, "-m", "jepa_sweeps.run", str(ROOT / "search_spaces" / "smoke.yaml"),
               "--set", "trial.data.name=imagefolder", "--set", f"trial.data.path={folder}",
               "--set", "trial.data.image_size=16", "--set", "trial.optim.batch_size=32",
               "--set", "metric=sel_loss_scaled", "--set", "mode=min"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "best by sel_loss_scaled (min)" in done.stdout
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 2 and all(r.data.tags["jepa.status"] == "finished" for r in runs)
    for run in runs:
        assert {"sel_loss_scaled", "isotropy", "rankme"} <= set(run.data.metrics)
        assert not {"knn_acc", "linear_acc", "final_linear_acc"} & set(run.data.metrics)


def test_spec_refuses_a_wrong_mode_or_a_labelled_metric_on_unlabelled_data(tmp_path: Path) -> None:
    base = {"name": "x", "trial": {"epochs": 1}}
    with pytest.raises(ValueError, match="mode='max': isotropy is better lower"):
        SweepSpec.model_validate({**base, "metric": "isotropy", "mode": "max"})
    with pytest.raises(ValueError, match="metric='knn_acc': needs labels"):
        SweepSpec.model_validate({**base, "trial": {"data": {"labels": "none"}}})
    flat = {"data": {"name": "imagefolder", "path": str(_flat_folder(tmp_path / "flat", n=3))}}
    with pytest.raises(ValueError, match="metric='linear_acc': needs labels"):
        SweepSpec.model_validate({**base, "trial": flat, "metric": "linear_acc"})
    assert SweepSpec.model_validate({**base, "trial": flat, "metric": "rankme"}).metric == "rankme"
