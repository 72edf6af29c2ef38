"""Tiny dataset folders in the real on-disk formats, so the loaders are tested without downloads.

Image 0 of every CIFAR/STL-10 train split is `pattern(...)`, so tests can check pixel orientation
exactly; labels cycle through every class, so each class appears in every split.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def pattern(channels: int, height: int, width: int) -> np.ndarray:
    """(C, H, W) uint8 image that changes under any swap or flip of its axes."""
    c, y, x = np.indices((channels, height, width))
    return ((c * 71 + y * 13 + x * 3 + 1) % 256).astype(np.uint8)


def _images(rng: np.random.Generator, n: int, channels: int, size: int) -> np.ndarray:
    images = rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)
    images[0] = pattern(channels, size, size)
    return images


def _labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    if n < num_classes:
        raise ValueError(f"need at least {num_classes} images so that every class appears, got {n}")
    return rng.permutation(np.arange(n) % num_classes)


class _Python2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote for CIFAR: byte strings and numpy.core names.

    The distributed CIFAR files are such pickles; Python 3's protocol 2 would instead wrap
    bytes in `_codecs.encode` calls, which the real files never contain.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_string

    def save_global(self, obj: object, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def _dump(file: Path, batch: dict, protocol: int | str) -> None:
    """protocol: a pickle protocol number, or "python2" for the original files' encoding."""
    with open(file, "wb") as f:
        if protocol == "python2":
            _Python2Pickler(f, protocol=2).dump(batch)
        else:
            pickle.dump(batch, f, protocol=protocol)


def write_cifar10(
    root: Path,
    n_train: int = 50,
    n_test: int = 20,
    seed: int = 0,
    protocol: int | str = pickle.DEFAULT_PROTOCOL,
) -> Path:
    """Write `cifar-10-batches-py/` under root (train split over the 5 batches); returns that folder."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x, y = _images(rng, n_train, 3, 32), _labels(rng, n_train, 10)
    parts = zip(np.array_split(x, 5), np.array_split(y, 5))
    splits = [(f"data_batch_{i}", px, py) for i, (px, py) in enumerate(parts, 1)]
    splits.append(("test_batch", _images(rng, n_test, 3, 32), _labels(rng, n_test, 10)))
    for file, images, labels in splits:
        batch = {
            b"batch_label": file.encode(),
            b"labels": labels.tolist(),
            b"data": images.reshape(len(images), -1),
            b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
        }
        _dump(folder / file, batch, protocol)
    return folder


def write_cifar100(
    root: Path,
    n_train: int = 100,
    n_test: int = 100,
    seed: int = 0,
    protocol: int | str = pickle.DEFAULT_PROTOCOL,
) -> Path:
    """Write `cifar-100-python/{train,test}` under root; returns that folder."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for file, n in (("train", n_train), ("test", n_test)):
        images, fine = _images(rng, n, 3, 32), _labels(rng, n, 100)
        batch = {
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            b"batch_label": file.encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"data": images.reshape(n, -1),
        }
        _dump(folder / file, batch, protocol)
    return folder


def write_stl10(root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Path:
    """Write `stl10_binary/` (column-major images, labels 1..10) under root; returns that folder."""
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        images = _images(rng, n, 3, 96)
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{split}_y.bin").write_bytes((_labels(rng, n, 10) + 1).astype(np.uint8).tobytes())
    return folder


def write_imagefolder(
    root: Path,
    classes: tuple[str, ...] = ("a", "b"),
    per_class: int = 3,
    size: int | tuple[int, int] = 16,
    test_split: str = "val",
    seed: int = 0,
) -> Path:
    """Write root/{train,<test_split>}/<class>/ with RGB images; `size` is side or (width, height)."""
    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    # Mixed formats and suffix case, as real folders have; PNG/BMP keep pixels exact.
    suffixes = (".png", ".bmp", ".JPG")
    for split in ("train", test_split):
        for cls in classes:
            folder = Path(root) / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}{suffixes[i % len(suffixes)]}")
    return Path(root)
