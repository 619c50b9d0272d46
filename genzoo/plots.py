"""Sample pictures: a PNG grid for images, a scatter for 2-D points, and for vectors of any other width
a projection onto the reference data's first two principal components (samples over data) beside
a grid of per-feature marginals."""

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


def save_picture(image: np.ndarray, path: str | Path, scale: int = 2) -> Path:
    """One picture (H, W) grey or (H, W, 3) colour, values in [0, 1] -> PNG."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 3 and x.shape[-1] == 3:
        x = x.transpose(2, 0, 1)
    else:
        raise ValueError(f"a picture is (H, W) or (H, W, 3), got shape {x.shape}")
    return image_grid(x[None], path, nrow=1, scale=scale)


def _save(fig, path: str | Path) -> Path:
    """Lay out, write and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


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
    return _save(fig, path)


MARGINAL_PANELS = 11  # features drawn as marginals beside the projection (the first ones)


def principal_axes(reference: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and the first min(k, D) principal directions (D, k') of the reference rows."""
    mean = reference.mean(0)
    _, _, vt = np.linalg.svd(reference - mean, full_matrices=False)
    return mean, vt[:k].T


def vectors(x: np.ndarray, path: str | Path, reference: np.ndarray | None = None, title: str = "",
            binary: bool = False) -> Path:
    """(n, D) samples: PCA projection onto the reference's first two components (the samples' own
    when no reference is given), samples over the reference; then the marginals of the first
    MARGINAL_PANELS features (histograms, or for binary data every feature's mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    ref = None if reference is None else np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    mean, axes = principal_axes(x if ref is None else ref)
    features = 1 if binary else min(MARGINAL_PANELS, x.shape[1])
    cols = min(4, 1 + features)
    rows = -(-(1 + features) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), dpi=80, squeeze=False)
    panels = grid.ravel()
    for data, colour, label in ((ref, "grey", "data"), (x, "tab:blue", "samples")):
        if data is not None:
            p = (data - mean) @ axes  # (n, k)
            panels[0].scatter(p[:, 0], p[:, 1] if p.shape[1] > 1 else np.zeros(len(p)), s=3, alpha=0.4,
                              c=colour, label=label)
    panels[0].set_title(f"{title} PCA" if title else "PCA", fontsize=9)
    panels[0].legend(fontsize=7, loc="upper right")
    if binary:
        dims = np.arange(x.shape[1])
        if ref is not None:
            panels[1].bar(dims - 0.2, ref.mean(0), width=0.4, color="grey", label="data")
        panels[1].bar(dims + 0.2, x.mean(0), width=0.4, color="tab:blue", label="samples")
        panels[1].set_title("feature means", fontsize=9)
    for j in range(0 if binary else features):
        ax = panels[1 + j]
        values = [x[:, j]] + ([] if ref is None else [ref[:, j]])
        bins = np.histogram_bin_edges(np.concatenate(values), bins=30)
        if ref is not None:
            ax.hist(ref[:, j], bins=bins, density=True, color="grey", alpha=0.5)
        ax.hist(x[:, j], bins=bins, density=True, color="tab:blue", alpha=0.5)
        ax.set_title(f"feature {j}", fontsize=9)
    for ax in panels[1 + features:]:
        ax.axis("off")
    return _save(fig, path)


def save_samples(x: np.ndarray, path: str | Path, centers: np.ndarray | None = None, title: str = "",
                 reference: np.ndarray | None = None, binary: bool | None = None) -> Path:
    """Grid for image-shaped samples, scatter for 2-D points, projection and marginals for other
    vectors (over `reference` rows, e.g. the test split, when given; binary vectors, which `binary`
    says or else their 0/1 values, get their feature means as marginals)."""
    x = np.asarray(x)
    if x.ndim == 4:
        return image_grid(x, path)
    if x.ndim == 2 and x.shape[1] == 2:
        return scatter(x, path, centers, title)
    if x.ndim == 2 and len(x) >= 1:
        if binary is None:
            binary = bool(np.isin(x, (0, 1)).all())
        return vectors(x, path, reference, title, binary=binary)
    raise ValueError(f"cannot draw samples of shape {x.shape[1:]}: only images and vectors")
