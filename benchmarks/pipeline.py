"""Row 2: the batched multi-crop views against torchvision's per-image PIL pipeline.

Both make 2 global 32px + 6 local 16px views of CIFAR-sized uint8 images with the same operations
and settings (RandomResizedCrop, flip, colour jitter p=0.8, grayscale p=0.2, Gaussian blur with
the same kernel size, solarize p=0.2, to float and normalise) and both get the machine's 2 cores:
``MultiCrop`` as 2 torch threads in the main process, torchvision as a DataLoader with 2 worker
processes (1 thread each), which is how per-image pipelines are parallelised.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from benchmarks.common import Row, median, now, timed
from jepa_sweeps.data.views import Augment, CropGroup, MultiCrop

GLOBAL = CropGroup(2, 32, (0.3, 1.0))
LOCAL = CropGroup(6, 16, (0.05, 0.3))
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def blur_kernel(size: int) -> int:
    """``MultiCrop``'s kernel size for a side (≈10 % of it, odd, at least 3)."""
    return min(max(3, 2 * int(0.05 * size) + 1), 2 * size - 1)


def torchvision_view(group: CropGroup, a: Augment) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(group.size, scale=group.scale, ratio=a.ratio, antialias=True),
        v2.RandomHorizontalFlip(a.flip_p),
        v2.RandomApply([v2.ColorJitter(a.brightness, a.contrast, a.saturation, a.hue)], p=a.jitter_p),
        v2.RandomGrayscale(a.grayscale_p),
        v2.RandomApply([v2.GaussianBlur(blur_kernel(group.size), a.blur_sigma)], p=a.blur_p),
        v2.RandomSolarize(threshold=128, p=a.solarize_p),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])


class PILMultiCrop(Dataset):
    """What a torchvision CIFAR dataset does per item: array → PIL image → every view."""

    def __init__(self, images: torch.Tensor, augment: Augment) -> None:
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.views = [torchvision_view(GLOBAL, augment)] * GLOBAL.count + [torchvision_view(LOCAL, augment)] * LOCAL.count

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        image = Image.fromarray(self.images[i])
        return [view(image) for view in self.views]


def torchvision_rate(images: torch.Tensor, batch: int, workers: int) -> float:
    """Images/s over all batches but the first (which pays for the worker start-up)."""
    loader = DataLoader(PILMultiCrop(images, Augment()), batch_size=batch, num_workers=workers, shuffle=True)
    batches = iter(loader)
    next(batches)
    started, seen = now(), 0
    for views in batches:
        seen += views[0].shape[0]
    return seen / (now() - started)


def multicrop_rate(images: torch.Tensor, batch: int, reps: int) -> float:
    crop = MultiCrop(GLOBAL, LOCAL, Augment(), MEAN, STD, seed=0)
    idx = torch.arange(batch)
    epochs = iter(range(1 << 30))
    return batch / median(timed(lambda: crop(images[:batch], idx, next(epochs)), reps, warmup=2))


def pipeline_row(batch: int, batches: int, reps: int, threads: int = 2) -> Row:
    """``batches`` timed torchvision batches (plus one for start-up), ``reps`` MultiCrop calls."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, ((batches + 1) * batch, 3, 32, 32), dtype=torch.uint8, generator=gen)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = multicrop_rate(images, batch, reps)
    finally:
        torch.set_num_threads(previous)
    theirs = torchvision_rate(images, batch, workers=threads)
    speedup = ours / theirs
    details: dict[str, Any] = {
        "multicrop_images_per_s": round(ours, 1), "torchvision_images_per_s": round(theirs, 1),
        "batch": batch, "views": "2×32px + 6×16px", "cores": threads,
    }
    return Row("2", "views: batched MultiCrop ÷ torchvision v2 PIL", f"{speedup:.1f}×", "≥ 2×", speedup >= 2, speedup,
               details, [f"MultiCrop {ours:.0f} images/s vs torchvision {theirs:.0f} images/s (batch {batch}, 8 views each)"])
