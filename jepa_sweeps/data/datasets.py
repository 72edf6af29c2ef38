"""Whole datasets as in-memory uint8 tensors.

Training takes batches by indexing these tensors and builds views with batched tensor ops
(per-image PIL multi-crop managed ~300 images/s per core here, batched tensor ops ~800 at batch
512), so every loader decodes its files once, up front, and per-image Python work is
limited to ImageFolder, whose files can only be decoded one by one.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jepa_sweeps.data.base import Arrays, DataError
from jepa_sweeps.data.imagefolder import (
    IMAGEFOLDER_SIZE,
    check_imagefolder,
    read_imagefolder,
)
from jepa_sweeps.home import home

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "stl10", "imagefolder")

# Bounds the float32 working copy when resizing (e.g. all of STL-10 would need ~1.4 GB at once).
_RESIZE_CHUNK = 1024


@dataclass(frozen=True, eq=False)  # eq=False: a field-wise == on tensors cannot give one bool
class ImageDataset:
    """A train/test pair, ready to be indexed into batches. Unlabelled data has ``num_classes`` 0
    and every label -1 (``labelled`` is False): only label-free evaluation applies."""

    name: str
    train_images: torch.Tensor  # uint8, (N, C, H, W), contiguous
    train_labels: torch.Tensor  # int64, (N,)
    test_images: torch.Tensor  # uint8, (M, C, H, W)
    test_labels: torch.Tensor  # int64, (M,)
    num_classes: int

    def __post_init__(self) -> None:
        # Views and models rely on these invariants; catch a hand-built dataset that breaks them.
        for split, images, labels in (
            ("train", self.train_images, self.train_labels),
            ("test", self.test_images, self.test_labels),
        ):
            if images.dtype != torch.uint8 or images.ndim != 4 or not images.is_contiguous():
                raise ValueError(f"{self.name}: {split} images must be contiguous uint8 (N, C, H, W)")
            if images.shape[2] != images.shape[3] or images.shape[1:] != self.train_images.shape[1:]:
                raise ValueError(f"{self.name}: {split} images must be square and match the train shape")
            if labels.dtype != torch.int64 or labels.shape != (len(images),):
                raise ValueError(f"{self.name}: {split} labels must be int64 of shape ({len(images)},)")

    @property
    def labelled(self) -> bool:
        return self.num_classes > 0

    @property
    def channels(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_images.shape[2]

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel train-split mean in [0, 1] units, for normalising inputs."""
        return self._moments[0]

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel train-split population std in [0, 1] units, for normalising inputs."""
        return self._moments[1]

    @cached_property
    def _moments(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        # A 256-bin histogram per channel is exact and avoids a float copy of the whole split.
        levels = torch.arange(256, dtype=torch.float64) / 255
        means, stds = [], []
        for c in range(self.channels):
            counts = torch.bincount(self.train_images[:, c].reshape(-1), minlength=256).double()
            p = counts / counts.sum()
            mean = float(p @ levels)
            means.append(mean)
            stds.append(float(p @ (levels - mean) ** 2) ** 0.5)
        return tuple(means), tuple(stds)


def load_dataset(
    name: str, path: str | os.PathLike[str] | None = None, image_size: int | None = None, labels: bool = True
) -> ImageDataset:
    """Load a whole dataset into memory; `image_size` resizes every image once, here.

    ``labels=False`` drops the labels (as for a flat image folder, which has none)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
    ):
        raise DataError(f"{name}: image_size must be a positive integer, got {image_size!r}")
    if name == "digits":
        arrays = _digits()
    elif name == "imagefolder":
        arrays = read_imagefolder(_root(name, path), image_size or IMAGEFOLDER_SIZE)
    elif name == "stl10":
        arrays = _stl10(_root(name, path))
    else:
        arrays = _cifar(name, _root(name, path))
    train_x, train_y, test_x, test_y, num_classes = arrays
    if not labels:
        train_y, test_y, num_classes = np.full(len(train_x), -1), np.full(len(test_x), -1), 0
    return ImageDataset(
        name=name,
        train_images=_image_tensor(train_x, image_size),
        train_labels=torch.from_numpy(np.require(train_y, np.int64, ["C", "W"])),
        test_images=_image_tensor(test_x, image_size),
        test_labels=torch.from_numpy(np.require(test_y, np.int64, ["C", "W"])),
        num_classes=num_classes,
    )


def check_folder(name: str, path: str | os.PathLike[str]) -> None:
    """Cheaply check that ``path`` holds ``name``'s files (validation, before anything starts):
    the files exist and are not empty, ImageFolder has train/ and val/ with the same classes and
    an image in each; nothing is decoded. Raises ``DataError``."""
    root = _root(name, path)
    if name in _CIFAR:
        layout = _CIFAR[name]
        files = (*layout.train, layout.test)
        folder = _locate(name, root, layout.folder, files, layout.what, layout.expected)
    elif name == "stl10":
        folder = _locate("stl10", root, "stl10_binary", _STL_FILES, "STL-10 binaries", ", ".join(_STL_FILES))
        files = _STL_FILES
    elif name == "imagefolder":
        check_imagefolder(root)
        return
    else:
        return
    empty = [f for f in files if (folder / f).stat().st_size == 0]
    if empty:
        raise DataError(f"{name}: empty file {folder / empty[0]}")


def _image_tensor(images: np.ndarray, size: int | None) -> torch.Tensor:
    # np.require copies only when needed: strided views (STL-10) or read-only unpickled buffers.
    x = torch.from_numpy(np.require(images, np.uint8, ["C", "W"]))
    if size is None or x.shape[-1] == size:
        return x
    out = torch.empty((len(x), x.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, len(x), _RESIZE_CHUNK):
        chunk = x[i : i + _RESIZE_CHUNK].float()
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True)
        out[i : i + _RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _root(name: str, path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        raise DataError(f"{name}: no data path given (only digits is built in)")
    root = Path(path).expanduser()
    if not root.is_dir():
        problem = f"{root} is not a folder" if root.exists() else f"no such folder {root}"
        raise DataError(f"{name}: {problem}")
    return root


def _locate(
    name: str, root: Path, folder: str, files: tuple[str, ...], what: str, expected: str
) -> Path:
    """Accept the dataset folder itself or its parent, as users point at either."""
    for candidate in (root, root / folder):
        if any((candidate / f).is_file() for f in files):
            missing = [f for f in files if not (candidate / f).is_file()]
            if missing:
                raise DataError(f"{name}: missing {', '.join(missing)} in {candidate}")
            return candidate
    raise DataError(f"{name}: no {what} at {root} (expected {expected})")


def _check_labels(
    name: str, file: Path, labels: object, n: int, num_classes: int, first: int = 0
) -> np.ndarray:
    """Labels as int64 in 0..num_classes-1; `first` is the on-disk value of class 0."""
    not_labels = DataError(f"{name}: {file} has {n} images but its labels are not {n} integers")
    try:
        arr = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as err:
        raise not_labels from err
    if arr.shape != (n,):
        raise not_labels
    last = first + num_classes - 1
    if arr.min() < first or arr.max() > last:
        found = f"{arr.min()}..{arr.max()}"
        raise DataError(f"{name}: {file} has labels in {found}, expected {first}..{last}")
    return arr - first


def _digits() -> Arrays:
    """The pinned split, kept once per machine under ``$JEPA_SWEEPS_HOME/cache``: importing
    scikit-learn costs every worker of every trial ~0.6 s of CPU at start-up, ~5 % of a trial's
    start-up here (benchmarks row 1b)."""
    from importlib.metadata import version

    cache = home() / "cache" / f"digits-scikit-learn-{version('scikit-learn')}.npz"
    names = ("train_x", "train_y", "test_x", "test_y")
    try:
        with np.load(cache) as saved:
            return (*(saved[k] for k in names), 10)  # type: ignore[return-value]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # none yet, or torn: rebuilt below
    *arrays, classes = _digits_split()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f".{os.getpid()}-{cache.name}")  # workers of one node may race
        np.savez(partial, **dict(zip(names, arrays)))
        os.replace(partial, cache)
    except OSError:
        pass  # a read-only home: load from scikit-learn every time
    return (*arrays, classes)  # type: ignore[return-value]


def _digits_split() -> Arrays:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.data * (255 / 16)).astype(np.uint8).reshape(-1, 1, 8, 8)
    # Pinned split: results and tests compare across runs, so never change its arguments.
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )
    return train_x, train_y, test_x, test_y, 10


# ---- CIFAR -------------------------------------------------------------------------------------

_NUMPY_GLOBALS = frozenset(
    {
        # numpy < 2 names (the distributed Python 2 pickles), then numpy >= 2 names.
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        # Protocol-5 pickles (Python >= 3.14's default) rebuild arrays through _frombuffer.
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else, since a pickle can run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(name: str, file: Path) -> object:
    try:
        with open(file, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    # Anything can fail while decoding untrusted bytes; all of it means "not a CIFAR file".
    except Exception as err:
        raise DataError(f"{name}: unreadable pickle {file} ({type(err).__name__}: {err})") from err


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    train: tuple[str, ...]
    test: str
    label_key: bytes
    num_classes: int
    what: str
    expected: str


_CIFAR = {
    "cifar10": _CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        b"labels",
        10,
        "CIFAR-10 batches",
        "data_batch_1..5 and test_batch",
    ),
    "cifar100": _CifarLayout(
        "cifar-100-python", ("train",), "test", b"fine_labels", 100, "CIFAR-100 files", "train and test"
    ),
}


def _cifar(name: str, root: Path) -> Arrays:
    layout = _CIFAR[name]
    files = (*layout.train, layout.test)
    folder = _locate(name, root, layout.folder, files, layout.what, layout.expected)
    train = [_cifar_file(name, folder / f, layout) for f in layout.train]
    test_x, test_y = _cifar_file(name, folder / layout.test, layout)
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return train_x, train_y, test_x, test_y, layout.num_classes


def _cifar_file(name: str, file: Path, layout: _CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(name, file)
    if not isinstance(batch, dict) or b"data" not in batch or layout.label_key not in batch:
        keys = f"b'data' and {layout.label_key!r}"
        raise DataError(f"{name}: {file} is not a CIFAR batch (expected a dict with {keys})")
    data = batch[b"data"]
    is_array = isinstance(data, np.ndarray)
    if not (is_array and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
        got = f"{data.dtype} {data.shape}" if is_array else type(data).__name__
        raise DataError(f"{name}: {file} has b'data' of {got}, expected uint8 (N, 3072)")
    if not len(data):
        raise DataError(f"{name}: {file} holds no images")
    labels = _check_labels(name, file, batch[layout.label_key], len(data), layout.num_classes)
    # Rows are three 32x32 planes (R, G, B), each row-major: exactly C-order (3, 32, 32).
    return data.reshape(-1, 3, 32, 32), labels


# ---- STL-10 ------------------------------------------------------------------------------------

_STL_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
_STL_IMAGE_BYTES = 3 * 96 * 96


def _stl10(root: Path) -> Arrays:
    folder = _locate("stl10", root, "stl10_binary", _STL_FILES, "STL-10 binaries", ", ".join(_STL_FILES))
    train_x, train_y = _stl_split(folder, "train")
    test_x, test_y = _stl_split(folder, "test")
    return train_x, train_y, test_x, test_y, 10


def _stl_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    x_file, y_file = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
    pixels, labels = _read_bytes(x_file), _read_bytes(y_file)
    if not pixels.size or pixels.size % _STL_IMAGE_BYTES:
        raise DataError(
            f"stl10: {x_file} holds {pixels.size} bytes, not a whole number of 3x96x96 images"
        )
    # Each channel is stored column-major (MATLAB order): swap the last two axes to get (H, W).
    images = pixels.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
    return images, _check_labels("stl10", y_file, labels, len(images), 10, first=1)


def _read_bytes(file: Path) -> np.ndarray:
    try:
        return np.fromfile(file, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"stl10: cannot read {file} ({err.strerror or err})") from err
