"""The ImageFolder reader: ``train/`` and ``val/`` (or ``test/``) of class folders, or a flat
folder of unlabelled images. Files are decoded one by one (PIL), resized to a square once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from jepa_sweeps.data.base import Arrays, DataError

IMAGEFOLDER_SIZE = 64
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def check_imagefolder(root: Path) -> None:
    """``check_folder``'s part for ImageFolder: train/ and val/ with the same classes and an image
    in each, or a flat folder of at least 2 images; nothing is decoded."""
    if is_flat_folder(root):
        if len(_image_files(root)) < 2:
            raise DataError(f"imagefolder: {root} holds 1 image; a flat folder needs at least 2")
        return
    for split_dir, classes in _imagefolder_classes(root):
        for cls in classes:
            if next(_images(split_dir / cls), None) is None:
                looked_for = ", ".join(IMAGE_SUFFIXES)
                raise DataError(f"imagefolder: no images in {split_dir / cls} (looked for {looked_for})")


def _imagefolder_classes(root: Path) -> list[tuple[Path, list[str]]]:
    """The train and val (or test) folders with their class names, which must agree."""
    train_dir = root / "train"
    test_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(
            f"imagefolder: expected train/ and val/ (or test/) folders, or a flat folder of images, in {root}"
        )
    classes = _class_names(train_dir)
    test_classes = _class_names(test_dir)
    if classes != test_classes:
        only_train = ", ".join(sorted(set(classes) - set(test_classes))) or "-"
        only_test = ", ".join(sorted(set(test_classes) - set(classes))) or "-"
        raise DataError(
            f"imagefolder: class folders differ between {train_dir} and {test_dir} "
            f"(only in train: {only_train}; only in {test_dir.name}: {only_test})"
        )
    return [(train_dir, classes), (test_dir, classes)]


def _images(folder: Path) -> Iterator[Path]:
    return (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_imagefolder(root: Path, size: int) -> Arrays:
    if is_flat_folder(root):
        return _flat_folder(root, size)
    (train_dir, classes), (test_dir, _) = _imagefolder_classes(root)
    train_x, train_y = _folder_split(train_dir, classes, size)
    test_x, test_y = _folder_split(test_dir, classes, size)
    return train_x, train_y, test_x, test_y, len(classes)


def is_flat_folder(path: str | os.PathLike[str]) -> bool:
    """An ``imagefolder`` path holding images directly and no train/ split: unlabelled data."""
    root = Path(path).expanduser()
    return root.is_dir() and not (root / "train").is_dir() and bool(_image_files(root))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _flat_folder(root: Path, size: int) -> Arrays:
    """Unlabelled images directly in ``root``: every 10th file (in name order) is held out for
    the label-free evaluation, the rest train."""
    files = _image_files(root)
    if len(files) < 2:
        raise DataError(f"imagefolder: {root} holds {len(files)} image(s); a flat folder needs at least 2")
    held_out = set(range(0, len(files), 10))
    images = np.stack([_read_image(f, size).transpose(2, 0, 1) for f in files])
    test = np.array(sorted(held_out))
    train = np.array([i for i in range(len(files)) if i not in held_out])
    return images[train], np.full(len(train), -1), images[test], np.full(len(test), -1), 0


def _class_names(split_dir: Path) -> list[str]:
    names = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise DataError(f"imagefolder: no class folders in {split_dir}")
    return names


def _folder_split(split_dir: Path, classes: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        found = sorted(_images(split_dir / cls))
        if not found:
            looked_for = ", ".join(IMAGE_SUFFIXES)
            raise DataError(f"imagefolder: no images in {split_dir / cls} (looked for {looked_for})")
        files += found
        labels += [label] * len(found)
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, file in enumerate(files):
        images[i] = _read_image(file, size).transpose(2, 0, 1)
    return images, np.array(labels, dtype=np.int64)


def _read_image(file: Path, size: int) -> np.ndarray:
    try:
        with Image.open(file) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"imagefolder: cannot read image {file} ({err})") from err
