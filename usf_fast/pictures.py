"""Pictures a person would rather look at than read: sample grids, a 2-D scatter over the data, and
the side-by-side grid of `usf-fast generate --compare` with each row labelled by its method."""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from .files import atomic_write

__all__ = ["image_grid", "write_samples_picture", "write_compare_grid"]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def image_grid(x: torch.Tensor, cols: int = 8, pad: int = 1):
    """(B, C, H, W) in [−1, 1] → one (rows·(H+pad)+pad, cols·(W+pad)+pad, C) float array in [0, 1]."""
    b, c, h, w = x.shape
    rows = math.ceil(b / cols)
    grid = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.float32)
    img = x.detach().float().cpu().clamp(-1, 1).add(1).div(2).permute(0, 2, 3, 1).numpy()
    for i in range(b):
        r, k = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = img[i]
    return grid


def write_samples_picture(x: torch.Tensor, path: str, title: str, n: int, data: torch.Tensor | None = None) -> None:
    """A PNG: an image grid of the first n samples (B, C, H, W with C in 1, 3), or for 2-D points
    (B, 2) a scatter over `data`."""
    plt = _plt()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if x.dim() == 2 and x.shape[1] == 2 and data is not None:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.scatter(data[:, 0], data[:, 1], s=3, alpha=0.3, label="data")
        ax.scatter(x[:, 0].float(), x[:, 1].float(), s=3, alpha=0.6, label="samples")
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
        ax.set_aspect("equal")
        ax.legend(loc="upper right")
    elif x.dim() == 4 and x.shape[1] in (1, 3):
        n = min(n, x.shape[0])
        grid = image_grid(x[:n], math.ceil(math.sqrt(n)))
        fig, ax = plt.subplots(figsize=(min(8, 0.5 + 0.02 * grid.shape[1] * 4), min(8, 0.5 + 0.02 * grid.shape[0] * 4)))
        ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.axis("off")
    else:
        raise ValueError(f"--grid: samples of shape {tuple(x.shape[1:])} are neither images (C in 1, 3) nor 2-D points")
    ax.set_title(title, fontsize=9)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


def write_compare_grid(rows: list[tuple[str, list]], path: str, title: str) -> None:
    """One row per method, its label at the left: rows = [(label, [PIL image, ...]), ...], the
    same noise in each column."""
    plt = _plt()
    cols = max(len(images) for _, images in rows)
    w, h = rows[0][1][0].size
    size = 2.2
    fig, axes = plt.subplots(len(rows), cols, figsize=(size * cols + 1.5, size * h / w * len(rows) + 0.6), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(np.asarray(images[c]))
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0:
                ax.set_title(f"seed column {c}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
