"""Per-trial diagnostic pictures: the covariance spectrum of eval embeddings (collapse shows as a
cliff after a few eigenvalues), and for ViTs the PCA of patch features and the CLS→patch attention
maps per layer and head, on a fixed set of eval images.

Pictures are returned as PNG bytes keyed by file name: the training loop hands them to its host
with the next checkpoint, and the sweep driver uploads them to MLflow (no MLflow here).
"""

from __future__ import annotations

import io
from typing import Any, Callable

import torch
from torch import nn

from jepa_sweeps.evaluation.attention import attention_maps, cls_patch_attention
from jepa_sweeps.models import supports_attention

PLOT_IMAGES = 4  # images shown in the PCA and attention pictures


def covariance_spectrum(features: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the feature covariance, largest first."""
    x = features.double()
    x = x - x.mean(0)
    cov = x.T @ x / max(x.shape[0] - 1, 1)
    return torch.linalg.eigvalsh(cov).flip(0).clamp_min(0.0)


def patch_pca(patch_features: torch.Tensor) -> torch.Tensor:
    """First 3 principal components of all patches of all images, each scaled to [0, 1]: (N, P, 3).

    One PCA over the images together, so equal colours mean similar features across images.
    """
    n, p, d = patch_features.shape
    x = patch_features.double().reshape(n * p, d)
    x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    comps = x @ vh[:3].T
    if comps.shape[1] < 3:  # fewer than 3 feature dims: pad with mid-grey
        comps = torch.cat([comps, comps.new_zeros(n * p, 3 - comps.shape[1])], dim=1)
    lo, hi = comps.amin(0), comps.amax(0)
    return ((comps - lo) / (hi - lo).clamp_min(1e-12)).reshape(n, p, 3).float()


def png_bytes(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` without pyplot and without a global backend (PNG output uses Agg).
    Imported here: only rank 0 draws, and only at plotting evals."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _image_rgb(image: torch.Tensor) -> torch.Tensor:
    """A uint8 (C, H, W) image as float RGB (H, W, 3) in [0, 1]."""
    x = image.float().div(255).permute(1, 2, 0)
    return x.expand(-1, -1, 3) if x.shape[2] == 1 else x[:, :, :3]


def _heat_rgb(values: torch.Tensor) -> torch.Tensor:
    """A (g, g) map as RGB through the inferno colour map, stretched from its min to its max (where
    attention goes; how peaked it is, is what the entropy and max-attention metrics measure)."""
    from matplotlib import colormaps

    lo, hi = values.min(), values.max()
    scaled = ((values - lo) / (hi - lo).clamp_min(1e-12)).cpu().numpy()
    return torch.from_numpy(colormaps["inferno"](scaled)[..., :3]).float()


def mosaic_png(
    panels: list[list[torch.Tensor]], title: str, col_titles: list[str], row_titles: list[str], cell: int = 64
) -> bytes:
    """A grid of RGB panels (H, W, 3), each scaled (nearest) to ``cell`` pixels, drawn as one
    image: a figure with one axes per panel costs about a second per picture here."""
    rows, cols, gap = len(panels), len(panels[0]), 4
    canvas = torch.ones(rows * (cell + gap) - gap, cols * (cell + gap) - gap, 3)
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            big = torch.nn.functional.interpolate(panel.permute(2, 0, 1)[None], size=(cell, cell), mode="nearest")[0]
            y, x = r * (cell + gap), c * (cell + gap)
            canvas[y : y + cell, x : x + cell] = big.permute(1, 2, 0)
    scale = 0.012  # inches per canvas pixel
    width, height = canvas.shape[1] * scale + 0.9, canvas.shape[0] * scale + 0.7
    fig = figure(figsize=(width, height))
    ax = fig.add_axes((0.8 / width, 0.05 / height, canvas.shape[1] * scale / width, canvas.shape[0] * scale / height))
    ax.imshow(canvas.numpy(), interpolation="nearest")
    ax.set_axis_off()
    for c, text in enumerate(col_titles):
        ax.text(c * (cell + gap) + cell / 2, -3, text, ha="center", va="bottom", fontsize=7)
    for r, text in enumerate(row_titles):
        ax.text(-4, r * (cell + gap) + cell / 2, text, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=8, y=1 - 0.08 / height, va="top")
    return png_bytes(fig)


def spectrum_png(eigenvalues: torch.Tensor, title: str) -> bytes:
    fig = figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.subplots()
    values = eigenvalues.cpu().numpy()
    ax.semilogy(range(1, len(values) + 1), values.clip(min=1e-12), marker=".", markersize=3)
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue (log)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    return png_bytes(fig)


def pca_png(images: torch.Tensor, rgb: torch.Tensor, grid: int, title: str) -> bytes:
    """Each image next to its patch-feature PCA rendered as RGB, one row per image."""
    panels = [[_image_rgb(image), rgb[i].reshape(grid, grid, 3)] for i, image in enumerate(images)]
    return mosaic_png(panels, title, ["image", "PC1-3 as RGB"], [f"#{i}" for i in range(len(images))])


def attention_png(images: torch.Tensor, maps: list[torch.Tensor], grid: int, title: str) -> bytes:
    """CLS→patch attention (mean over heads) of every layer, one row per image."""
    panels = [
        [_image_rgb(image)]
        + [_heat_rgb(cls_patch_attention(attn[i : i + 1])[0].mean(0).reshape(grid, grid)) for attn in maps]
        for i, image in enumerate(images)
    ]
    cols = ["image"] + [f"layer {layer}" for layer in range(len(maps))]
    return mosaic_png(panels, title, cols, [f"#{i}" for i in range(len(images))])


def head_attention_png(image: torch.Tensor, maps: list[torch.Tensor], grid: int, title: str) -> bytes:
    """CLS→patch attention of every head (columns) of every layer (rows) on one image: similar
    columns are collapsed heads."""
    panels = [
        [_image_rgb(image)] + [_heat_rgb(h.reshape(grid, grid)) for h in cls_patch_attention(attn[:1])[0]]
        for attn in maps
    ]
    cols = ["image"] + [f"head {h}" for h in range(maps[0].shape[1])]
    return mosaic_png(panels, title, cols, [f"layer {layer}" for layer in range(len(maps))])


@torch.no_grad()
def diagnostic_pngs(
    encoder: nn.Module,
    features: torch.Tensor,
    images: torch.Tensor,
    prepares: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    epoch: int,
) -> dict[str, bytes]:
    """The pictures of one eval, named ``epoch_<e>/<picture>.png``.

    ``features`` are eval embeddings (for the spectrum); ``images`` the fixed uint8 eval images;
    ``prepares`` maps a file-name suffix ("" for the training resolution, "_2x") to the input
    preparation at that resolution — PCA and attention pictures are drawn for ViTs only.
    """
    folder = f"epoch_{epoch:04d}"
    spectrum = spectrum_png(covariance_spectrum(features), f"covariance spectrum of eval embeddings, epoch {epoch}")
    files = {f"{folder}/spectrum.png": spectrum}
    if not supports_attention(encoder):
        return files
    shown = images[:PLOT_IMAGES]
    was_training = encoder.training
    encoder.eval()
    for suffix, prepare in prepares.items():
        x = prepare(shown)
        grid = x.shape[-1] // encoder.patch_size  # images are square
        label = f"{x.shape[-1]}px, epoch {epoch}; colour: panel min → max"
        maps = attention_maps(encoder, x)
        files.update({
            f"{folder}/patch_pca{suffix}.png": pca_png(
                shown, patch_pca(encoder.patch_tokens(x)), grid, f"patch PCA, {x.shape[-1]}px, epoch {epoch}"
            ),
            f"{folder}/attention{suffix}.png": attention_png(
                shown, maps, grid, f"CLS→patch attention, mean of heads, {label}"
            ),
            f"{folder}/attention_heads{suffix}.png": head_attention_png(
                shown[0], maps, grid, f"CLS→patch attention per head, image #0, {label}"
            ),
        })
    encoder.train(was_training)
    return files
