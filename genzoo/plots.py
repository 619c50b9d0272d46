"""Sample pictures: a PNG grid for images, a scatter for 2-D points."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def image_grid(x: np.ndarray, path: str | Path, nrow: int | None = None, scale: int = 2) -> Path:
    """(n, C, H, W) values in [0, 1] -> one PNG grid (greyscale for C=1, RGB for C=3)."""
    from PIL import Image

    x = np.clip(np.asarray(x, dtype=np.float32), 0, 1)
    n, c, h, w = x.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    pad = 1
    canvas = np.ones((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = x[i]
    pixels = (canvas * 255).round().astype(np.uint8)
    img = Image.fromarray(pixels[0]) if c == 1 else Image.fromarray(pixels[:3].transpose(1, 2, 0))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    img.save(path)
    return path


def scatter(x: np.ndarray, path: str | Path, centers: np.ndarray | None = None, title: str = "") -> Path:
    """2-D samples as a scatter plot, with the true modes marked when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(x).reshape(len(x), -1)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
    if centers is not None:
        ax.scatter(centers[:, 0], centers[:, 1], s=30, c="red", marker="x")
    ax.set_title(title)
    ax.set_aspect("equal")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_samples(x: np.ndarray, path: str | Path, centers: np.ndarray | None = None, title: str = "") -> Path:
    """Grid for image-shaped samples, scatter for 2-D points."""
    x = np.asarray(x)
    if x.ndim == 4:
        return image_grid(x, path)
    if x.ndim == 2 and x.shape[1] == 2:
        return scatter(x, path, centers, title)
    raise ValueError(f"cannot draw samples of shape {x.shape[1:]}: only images and 2-D points")
