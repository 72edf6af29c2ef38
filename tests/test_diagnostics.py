"""Per-trial pictures and their way from a worker's checkpoint into the trial's MLflow run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from jepa_sweeps.data.views import resize_normalise
from jepa_sweeps.evaluation.diagnostics import covariance_spectrum, diagnostic_pngs, patch_pca
from jepa_sweeps.models import SmallCNN, vit
from jepa_sweeps.tracking import upload_checkpoint_files
from jepa_sweeps.train import ARTIFACTS_DIR, save_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"


def test_spectrum_of_known_covariance() -> None:
    torch.manual_seed(0)
    x = torch.randn(20000, 3) * torch.tensor([3.0, 1.0, 0.1])
    assert torch.allclose(covariance_spectrum(x), torch.tensor([9.0, 1.0, 0.01], dtype=torch.float64), rtol=0.05)


def test_collapsed_features_have_one_direction() -> None:
    x = torch.randn(100, 1) * torch.ones(1, 8)
    spectrum = covariance_spectrum(x)
    assert spectrum[0] > 1 and (spectrum[1:] < 1e-10).all()


def test_patch_pca_is_rgb_in_unit_range() -> None:
    rgb = patch_pca(torch.randn(3, 16, 10))
    assert rgb.shape == (3, 16, 3)
    assert rgb.min() == 0.0 and rgb.max() == 1.0


def _images(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8)


def test_vit_pictures_at_both_resolutions() -> None:
    encoder = vit("tiny", 1, dim=16, depth=2, heads=2)
    prepares = {"": lambda x: resize_normalise(x, 8, (0.5,), (0.3,)), "_2x": lambda x: resize_normalise(x, 16, (0.5,), (0.3,))}
    files = diagnostic_pngs(encoder, torch.randn(50, 16), _images(), prepares, epoch=3)
    assert set(files) == {"epoch_0003/spectrum.png"} | {
        f"epoch_0003/{kind}{s}.png" for kind in ("patch_pca", "attention", "attention_heads") for s in prepares
    }
    assert all(data.startswith(PNG) for data in files.values())


def test_cnn_gets_the_spectrum_only() -> None:
    prepares = {"": lambda x: resize_normalise(x, 8, (0.5,), (0.3,))}
    files = diagnostic_pngs(SmallCNN(1, 8), torch.randn(50, 16), _images(), prepares, epoch=1)
    assert list(files) == ["epoch_0001/spectrum.png"]


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[MlflowClient, str]:
    folder = tmp_path_factory.mktemp("mlflow")
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.create_experiment("diagnostics", artifact_location=(folder / "artifacts").as_uri())
    return client, client.create_run(experiment).info.run_id


@pytest.mark.parametrize("as_uri", [False, True])
def test_checkpoint_files_reach_the_run(tmp_path: Path, mlflow_run: tuple[MlflowClient, str], as_uri: bool) -> None:
    """Files handed over with a checkpoint land under ``diagnostics/`` (local path or URI storage)."""
    client, run_id = mlflow_run
    state = {"model": {"backbone": {}}, "artifacts": {"epoch_0002/spectrum.png": PNG + b"x"}}
    save_checkpoint(state, tmp_path)
    assert (tmp_path / ARTIFACTS_DIR / "epoch_0002" / "spectrum.png").read_bytes() == PNG + b"x"
    assert "artifacts" not in torch.load(tmp_path / "state.pt", weights_only=True)
    upload_checkpoint_files(client, run_id, tmp_path.as_uri() if as_uri else str(tmp_path))
    listed = [a.path for a in client.list_artifacts(run_id, "diagnostics/epoch_0002")]
    assert listed == ["diagnostics/epoch_0002/spectrum.png"]


def test_a_pruned_checkpoint_is_only_a_warning(tmp_path: Path, mlflow_run: tuple[MlflowClient, str]) -> None:
    client, run_id = mlflow_run
    upload_checkpoint_files(client, run_id, str(tmp_path / "gone"))  # no artifacts folder: nothing to do
    upload_checkpoint_files(client, run_id, (tmp_path / "gone").as_uri())
