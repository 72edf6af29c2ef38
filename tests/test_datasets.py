"""Loaders round-trip the real on-disk formats (written by tests/fake_datasets.py) exactly."""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from jepa_sweeps.data.base import DataError
from jepa_sweeps.data.datasets import DATASETS, ImageDataset, load_dataset
from tests.fake_datasets import pattern, write_cifar10, write_cifar100, write_imagefolder, write_stl10

DIGIT_LEVELS = {round(v * 255 / 16) for v in range(17)}


def _read_pickle(file: Path) -> dict:
    with open(file, "rb") as f:  # our own fake file, so plain pickle is fine here
        return pickle.load(f, encoding="bytes")


def _write_pickle(file: Path, obj: object) -> None:
    with open(file, "wb") as f:
        pickle.dump(obj, f)


# ---- digits ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits")


def test_digits_split_shapes_and_types(digits: ImageDataset) -> None:
    assert digits.train_images.shape == (1437, 1, 8, 8)
    assert digits.test_images.shape == (360, 1, 8, 8)
    assert digits.train_images.dtype == digits.test_images.dtype == torch.uint8
    assert digits.train_labels.dtype == digits.test_labels.dtype == torch.int64
    assert digits.train_labels.shape == (1437,) and digits.test_labels.shape == (360,)
    assert digits.train_images.is_contiguous() and digits.test_images.is_contiguous()
    assert (digits.name, digits.num_classes, digits.channels, digits.image_size) == ("digits", 10, 1, 8)


def test_digits_pixels_are_rescaled_source_values(digits: ImageDataset) -> None:
    values = set(torch.cat([digits.train_images, digits.test_images]).unique().tolist())
    assert values <= DIGIT_LEVELS and {0, 255} <= values
    source = np.round(load_digits().data * 255 / 16)
    total = digits.train_images.sum().item() + digits.test_images.sum().item()
    assert total == source.sum()


def test_digits_split_is_stratified(digits: ImageDataset) -> None:
    train_counts = torch.bincount(digits.train_labels, minlength=10)
    test_counts = torch.bincount(digits.test_labels, minlength=10)
    assert (train_counts > 0).all() and (test_counts > 0).all()
    expected = (train_counts + test_counts).double() * 0.2
    assert ((test_counts - expected).abs() <= 1).all()


def test_digits_come_from_the_machine_cache_without_scikit_learn(
    digits: ImageDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first load writes the split to ``$JEPA_SWEEPS_HOME/cache``; a later process loads the
    same tensors from it without importing scikit-learn; a torn cache file is rebuilt."""
    import subprocess
    import sys

    monkeypatch.setenv("JEPA_SWEEPS_HOME", str(tmp_path))
    first = load_dataset("digits")
    (cache,) = (tmp_path / "cache").glob("digits-*.npz")
    probe = (
        "import sys, torch; from jepa_sweeps.data.datasets import load_dataset; d = load_dataset('digits'); "
        "print('sklearn' in sys.modules, int(d.train_images.sum()), int(d.test_labels.sum()))"
    )
    env = {**os.environ, "JEPA_SWEEPS_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", str(int(digits.train_images.sum())), str(int(digits.test_labels.sum()))]
    cache.write_bytes(cache.read_bytes()[:100])
    again = load_dataset("digits")
    for a, b in ((first, digits), (again, digits)):
        assert torch.equal(a.train_images, b.train_images) and torch.equal(a.test_labels, b.test_labels)
    assert cache.stat().st_size > 1000


def test_digits_is_deterministic_and_ignores_path(digits: ImageDataset, tmp_path: Path) -> None:
    again = load_dataset("digits", path=tmp_path / "not-used")
    assert torch.equal(again.train_images, digits.train_images)
    assert torch.equal(again.train_labels, digits.train_labels)
    assert torch.equal(again.test_images, digits.test_images)
    assert torch.equal(again.test_labels, digits.test_labels)


def test_mean_and_std_match_a_direct_computation(digits: ImageDataset, tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    for ds in (digits, load_dataset("cifar10", tmp_path)):
        x = ds.train_images.double() / 255
        assert ds.mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-12)
        assert ds.std == pytest.approx(x.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-12)
        assert len(ds.mean) == len(ds.std) == ds.channels


# ---- CIFAR -------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL, "python2"])
def test_cifar10_round_trip(tmp_path: Path, protocol: int | str) -> None:
    folder = write_cifar10(tmp_path, n_train=50, n_test=20, protocol=protocol)
    ds = load_dataset("cifar10", folder)
    assert ds.train_images.shape == (50, 3, 32, 32) and ds.test_images.shape == (20, 3, 32, 32)
    assert ds.train_images.is_contiguous() and ds.num_classes == 10

    # On disk a row is the R plane, then G, then B, each row-major.
    raw = _read_pickle(folder / "data_batch_1")[b"data"][0]
    first = ds.train_images[0]
    assert first[0, 0].tolist() == raw[:32].tolist()
    assert first[0, 1, 0] == raw[32] and first[1, 0, 0] == raw[1024] and first[2, 31, 31] == raw[3071]
    assert np.array_equal(first.numpy(), pattern(3, 32, 32))

    train_labels = sum((_read_pickle(folder / f"data_batch_{i}")[b"labels"] for i in range(1, 6)), [])
    assert ds.train_labels.tolist() == train_labels
    assert ds.test_labels.tolist() == _read_pickle(folder / "test_batch")[b"labels"]
    assert set(ds.test_labels.tolist()) == set(range(10))


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = write_cifar100(tmp_path, n_train=120, n_test=100, protocol="python2")
    ds = load_dataset("cifar100", folder)
    assert ds.num_classes == 100 and ds.train_images.shape == (120, 3, 32, 32)
    assert ds.train_labels.tolist() == _read_pickle(folder / "train")[b"fine_labels"]
    assert set(ds.test_labels.tolist()) == set(range(100))
    assert np.array_equal(ds.train_images[0].numpy(), pattern(3, 32, 32))


# ---- STL-10 ------------------------------------------------------------------------------------


def test_stl10_round_trip_undoes_column_major(tmp_path: Path) -> None:
    folder = write_stl10(tmp_path, n_train=20, n_test=10)
    ds = load_dataset("stl10", folder)
    assert ds.train_images.shape == (20, 3, 96, 96) and ds.test_images.shape == (10, 3, 96, 96)
    assert ds.train_images.is_contiguous() and ds.num_classes == 10

    # On disk each channel is column-major: the first 96 bytes are the left column.
    raw = np.fromfile(folder / "train_X.bin", dtype=np.uint8)
    first = ds.train_images[0]
    assert first[0, :, 0].tolist() == raw[:96].tolist()
    assert first[0, 0, 1] == raw[96] and first[1, 0, 0] == raw[96 * 96]
    assert np.array_equal(first.numpy(), pattern(3, 96, 96))

    raw_labels = np.fromfile(folder / "train_y.bin", dtype=np.uint8)
    assert ds.train_labels.tolist() == (raw_labels.astype(np.int64) - 1).tolist()
    assert set(ds.test_labels.tolist()) == set(range(10))


@pytest.mark.parametrize(
    ("name", "writer"),
    [("cifar10", write_cifar10), ("cifar100", write_cifar100), ("stl10", write_stl10)],
)
def test_parent_folder_is_accepted(tmp_path: Path, name: str, writer: Callable[..., Path]) -> None:
    folder = writer(tmp_path)
    via_parent, via_folder = load_dataset(name, tmp_path), load_dataset(name, str(folder))
    assert torch.equal(via_parent.train_images, via_folder.train_images)
    assert torch.equal(via_parent.test_labels, via_folder.test_labels)


# ---- ImageFolder -------------------------------------------------------------------------------


def test_imagefolder_round_trip(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, classes=("zebra", "ant"), per_class=3, size=16)
    known = pattern(3, 16, 16)
    Image.fromarray(known.transpose(1, 2, 0)).save(tmp_path / "train" / "ant" / "000.png")
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")

    ds = load_dataset("imagefolder", tmp_path, image_size=16)
    assert ds.num_classes == 2 and ds.train_images.shape == (6, 3, 16, 16)
    assert ds.train_labels.tolist() == [0, 0, 0, 1, 1, 1]  # "ant" sorts before "zebra"
    assert ds.test_labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(ds.train_images[0].numpy(), known)


def test_imagefolder_resizes_to_square_and_converts_to_rgb(tmp_path: Path) -> None:
    write_imagefolder(tmp_path, per_class=2, size=(20, 12), test_split="test")
    Image.new("L", (9, 9), color=200).save(tmp_path / "test" / "a" / "gray.png")
    ds = load_dataset("imagefolder", tmp_path)
    assert ds.train_images.shape == (4, 3, 64, 64) and ds.test_images.shape == (5, 3, 64, 64)
    assert (ds.test_images[2] == 200).all()  # "gray.png" sorts after 000.png and 001.bmp
    assert load_dataset("imagefolder", tmp_path, image_size=8).image_size == 8


# ---- resizing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "size"), [("digits", 16), ("stl10", 32)])  # up and down
def test_resize_to_other_size(tmp_path: Path, name: str, size: int) -> None:
    write_stl10(tmp_path)
    native, resized = load_dataset(name, tmp_path), load_dataset(name, tmp_path, image_size=size)
    assert resized.image_size == size
    assert resized.train_images.shape == (*native.train_images.shape[:2], size, size)
    assert resized.test_images.shape == (*native.test_images.shape[:2], size, size)
    assert resized.train_images.dtype == torch.uint8 and resized.train_images.is_contiguous()
    assert torch.equal(resized.train_labels, native.train_labels)
    assert resized.mean == pytest.approx(native.mean, abs=0.01)


def test_resize_to_native_size_is_a_no_op(digits: ImageDataset) -> None:
    assert torch.equal(load_dataset("digits", image_size=8).train_images, digits.train_images)


def test_resize_keeps_a_flat_image_flat(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    batch = _read_pickle(folder / "test_batch")
    batch[b"data"][0] = np.repeat(np.array([10, 128, 250], dtype=np.uint8), 1024)
    _write_pickle(folder / "test_batch", batch)
    image = load_dataset("cifar10", tmp_path, image_size=12).test_images[0]
    assert image.shape == (3, 12, 12)
    assert [image[c].unique().tolist() for c in range(3)] == [[10], [128], [250]]


# ---- errors ------------------------------------------------------------------------------------


def _edit_batch(file: Path, **changes: object) -> None:
    batch = _read_pickle(file)
    batch.update({key.encode(): value for key, value in changes.items()})
    _write_pickle(file, batch)


def _truncate(file: Path, n_bytes: int) -> None:
    file.write_bytes(file.read_bytes()[:n_bytes])


def _after(writer: Callable[[Path], Path], change: Callable[[Path], object]) -> Callable[[Path], Path]:
    """A broken tree: write a valid fake under root, then apply `change` to the folder written."""

    def build(root: Path) -> Path:
        change(writer(root))
        return root

    return build


def _a_file(root: Path) -> Path:
    (root / "f.bin").write_bytes(b"")
    return root / "f.bin"


def _empty_splits(root: Path) -> Path:
    (root / "train").mkdir()
    (root / "val").mkdir()
    return root


def _mkdirs(*folders: str) -> Callable[[Path], object]:
    return lambda root: [(root / f).mkdir() for f in folders]


ERROR_CASES: dict[str, tuple[str, Callable[[Path], Path], str]] = {
    # case: (dataset, build(root) -> path given to load_dataset, fragment of the message)
    "missing folder": ("cifar10", lambda root: root / "absent", "no such folder"),
    "file not folder": ("stl10", _a_file, "not a folder"),
    "empty cifar10": ("cifar10", lambda root: root, "no CIFAR-10 batches at"),
    "missing batch": ("cifar10", _after(write_cifar10, lambda d: (d / "data_batch_3").unlink()), "data_batch_3"),
    "garbage pickle": (
        "cifar10",
        _after(write_cifar10, lambda d: (d / "test_batch").write_bytes(b"\x00 junk")),
        "unreadable pickle",
    ),
    "truncated pickle": ("cifar10", _after(write_cifar10, lambda d: _truncate(d / "test_batch", 500)), "unreadable"),
    "not a dict": ("cifar10", _after(write_cifar10, lambda d: _write_pickle(d / "test_batch", [1])), "not a CIFAR"),
    "wrong shape": (
        "cifar10",
        _after(write_cifar10, lambda d: _edit_batch(d / "data_batch_2", data=np.zeros((10, 1024), np.uint8))),
        "(N, 3072)",
    ),
    "wrong dtype": (
        "cifar10",
        _after(write_cifar10, lambda d: _edit_batch(d / "test_batch", data=np.zeros((20, 3072), np.float32))),
        "float32",
    ),
    "short labels": ("cifar10", _after(write_cifar10, lambda d: _edit_batch(d / "test_batch", labels=[0])), "labels"),
    "label range": (
        "cifar10",
        _after(write_cifar10, lambda d: _edit_batch(d / "test_batch", labels=[10] * 20)),
        "expected 0..9",
    ),
    "cifar100 missing test": ("cifar100", _after(write_cifar100, lambda d: (d / "test").unlink()), "missing test"),
    "empty stl10": ("stl10", lambda root: root, "no STL-10 binaries"),
    "missing stl file": ("stl10", _after(write_stl10, lambda d: (d / "test_y.bin").unlink()), "test_y.bin"),
    "partial stl image": (
        "stl10",
        _after(write_stl10, lambda d: _truncate(d / "train_X.bin", 3 * 96 * 96 + 5)),
        "3x96x96",
    ),
    "stl label count": ("stl10", _after(write_stl10, lambda d: _truncate(d / "test_y.bin", 2)), "labels"),
    "stl label zero": ("stl10", _after(write_stl10, lambda d: (d / "test_y.bin").write_bytes(bytes(10))), "1..10"),
    "no splits": ("imagefolder", lambda root: root, "expected train/ and val/"),
    "no val": ("imagefolder", _after(write_imagefolder, lambda d: shutil.rmtree(d / "val")), "expected train/"),
    "no classes": ("imagefolder", _empty_splits, "no class folders"),
    "class mismatch": ("imagefolder", _after(write_imagefolder, _mkdirs("val/c")), "only in val: c"),
    "empty class": ("imagefolder", _after(write_imagefolder, _mkdirs("train/c", "val/c")), "no images"),
    "corrupt image": (
        "imagefolder",
        _after(write_imagefolder, lambda d: (d / "train" / "b" / "bad.png").write_text("not\na\npng")),
        "bad.png",
    ),
}


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_data_gives_one_line_error_naming_the_path(tmp_path: Path, case: str) -> None:
    name, build, fragment = ERROR_CASES[case]
    root = tmp_path / "data"
    root.mkdir()
    path = build(root)
    with pytest.raises(DataError) as info:
        load_dataset(name, path)
    message = str(info.value)
    assert "\n" not in message
    assert str(root) in message and fragment in message
    assert message.startswith(f"{name}: ")


def test_unknown_name_lists_known_datasets() -> None:
    with pytest.raises(DataError, match="unknown dataset 'mnist'") as info:
        load_dataset("mnist")
    assert all(name in str(info.value) for name in DATASETS)


def test_real_datasets_need_a_path() -> None:
    with pytest.raises(DataError, match="cifar10: no data path"):
        load_dataset("cifar10")


@pytest.mark.parametrize("size", [0, -4, 2.5, True])
def test_bad_image_size(size: object) -> None:
    with pytest.raises(DataError, match="image_size"):
        load_dataset("digits", image_size=size)  # type: ignore[arg-type]


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def test_unpickler_refuses_code(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    _write_pickle(folder / "test_batch", {b"data": _RunsShell(f"touch {marker}"), b"labels": []})
    with pytest.raises(DataError, match="refusing to load .*system") as info:
        load_dataset("cifar10", tmp_path)
    assert str(folder / "test_batch") in str(info.value)
    assert not marker.exists()


def test_image_dataset_rejects_broken_tensors() -> None:
    images, labels = torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64)
    ImageDataset("ok", images, labels, images, labels, 2)
    for bad_images, bad_labels in (
        (images.float(), labels),
        (images.transpose(2, 3)[:, :, :, :7], labels),
        (images, labels[:3]),
        (images, labels.int()),
    ):
        with pytest.raises(ValueError):
            ImageDataset("bad", bad_images, bad_labels, images, labels, 2)


def test_data_error_is_always_one_line() -> None:
    assert str(DataError("cifar10: unreadable pickle /x (first\nsecond)")) == "cifar10: unreadable pickle /x (first second)"
