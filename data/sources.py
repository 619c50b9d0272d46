"""Raw dataset sources: synthetic mixtures, scikit-learn's digits, MNIST-family files, user files.

Every loader returns a `Raw` (arrays plus where they came from). Files of the
fixed datasets are checked against pinned SHA-256 digests of their *uncompressed*
content, so `x.gz` and `x` verify alike, and a truncated or altered file is named
in the error. Missing files are downloaded (checksums verified) when the
machine is online.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import shutil
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from data.errors import DataError

@dataclasses.dataclass
class Raw:
    """Arrays of one dataset before splitting. `splits` holds given splits (name -> (x, labels or None))."""

    kind: str  # 'points' | 'image' | 'binary'
    levels: int  # discrete levels (images), 2 for binary, 0 for real-valued points
    splits: dict[str, tuple[np.ndarray, np.ndarray | None]]
    source: str
    raw_files: dict[str, str]  # file name -> sha256 (of uncompressed content)
    modes: int = 0  # labels are mode ids 0..modes-1 that the mode-coverage measure counts (0: none)


# ---------------------------------------------------------------------- synthetic
def ring8(n: int, seed: int, radius: float = 1.0, std: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """8 Gaussians evenly on the circle (PacGAN/VEEGAN protocol; endpoints not repeated)."""
    centers = mode_centers("ring8", radius)
    return _mixture(centers, n, seed, std)


def grid25(n: int, seed: int, spacing: float = 2.0, std: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """25 Gaussians at {-4,-2,0,2,4}^2 (PacGAN/VEEGAN protocol)."""
    return _mixture(mode_centers("grid25", spacing), n, seed, std)


def mode_centers(name: str, scale: float = None) -> np.ndarray:
    if name == "ring8":
        angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
        r = 1.0 if scale is None else scale
        return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)
    if name == "grid25":
        s = 2.0 if scale is None else scale
        axis = np.arange(-2, 3) * s
        return np.array([(x, y) for x in axis for y in axis], dtype=np.float64)
    raise DataError(f"'{name}' is not a synthetic mixture (known: ring8, grid25)")


def _mixture(centers: np.ndarray, n: int, seed: int, std: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(centers), size=n)
    x = centers[labels] + std * rng.standard_normal((n, 2))
    return x.astype(np.float32), labels.astype(np.int64)


def synthetic(name: str, n_train: int, n_val: int, n_test: int, seed: int, std: float) -> Raw:
    make = {"ring8": ring8, "grid25": grid25}[name]
    splits = {}
    for i, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        splits[split] = make(n, seed=seed + i, std=std)
    return Raw("points", 0, splits, f"synthetic {name}, seed {seed}, std {std}", {})


def digits() -> Raw:
    """scikit-learn's 8x8 digits (1,797 images, 17 grey levels 0..16), shipped inside scikit-learn."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    return Raw("image", 17, {"all": (x, bunch.target.astype(np.int64))}, "sklearn.datasets.load_digits", {})


def breast_cancer() -> Raw:
    """scikit-learn's Wisconsin breast-cancer table (569 rows, 30 real features, shipped inside
    scikit-learn), each feature min-max scaled to [0, 1] over the whole table (as GAIN's reference code
    scales its data, Yoon et al. 2018); the diagnosis (0 malignant, 1 benign) as labels."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x = bunch.data.astype(np.float64)  # (569, 30)
    lo, hi = x.min(0), x.max(0)
    scaled = ((x - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.float32)
    return Raw("points", 0, {"all": (scaled, bunch.target.astype(np.int64))},
               "sklearn.datasets.load_breast_cancer, features min-max scaled to [0, 1]", {})


# ---------------------------------------------------------------------- MNIST family
MNIST_FILES = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FASHION_FILES = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
BINARIZED_FILES = {
    "binarized_mnist_train.amat": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "binarized_mnist_valid.amat": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "binarized_mnist_test.amat": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/{name}.gz", "https://yann.lecun.com/exdb/mnist/{name}.gz"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/{name}.gz"],
    "binarized-mnist": ["http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/{name}"],
}


def read_verified(folder: Path, name: str, sha256: str, dataset: str) -> bytes:
    """Uncompressed bytes of `name` or `name.gz` in `folder`, checked against `sha256`."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            try:
                blob = candidate.read_bytes()
                content = gzip.decompress(blob) if candidate.suffix == ".gz" else blob
            except (OSError, EOFError, zlib.error) as exc:
                raise DataError(f"{candidate} is corrupt or truncated ({exc})") from None
            digest = hashlib.sha256(content).hexdigest()
            if digest != sha256:
                raise DataError(
                    f"{candidate} does not match the published {dataset} file (sha256 {digest[:12]}..., "
                    f"expected {sha256[:12]}...): it is truncated, altered or a different file"
                )
            return content
    raise FileNotFoundError(name)


def fetch_files(dataset: str, files: dict[str, str], folders: list[Path], download_to: Path) -> dict[str, bytes]:
    """Find every file in the first folder that has it; download what is missing (if online)."""
    out = {}
    for name, digest in files.items():
        for folder in folders:
            try:
                out[name] = read_verified(folder, name, digest, dataset)
                break
            except FileNotFoundError:
                continue
        else:
            _download(dataset, name, download_to)
            out[name] = read_verified(download_to, name, digest, dataset)
    return out


def _download(dataset: str, name: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for template in MIRRORS[dataset]:
        url = template.format(name=name)
        target = folder / Path(url).name
        tmp = target.with_suffix(target.suffix + ".part")
        try:
            print(f"[genzoo] downloading {url}", flush=True)
            with urllib.request.urlopen(url, timeout=30) as resp, open(tmp, "wb") as fh:
                shutil.copyfileobj(resp, fh)
            tmp.replace(target)
            return
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            errors.append(f"{url}: {exc}")
    raise DataError(
        f"{dataset} file {name} is not in any local folder and could not be downloaded "
        f"({'; '.join(errors)}); put the original files in a folder and set GENZOO_DATA_DIR"
    )


def parse_idx(content: bytes, what: str) -> np.ndarray:
    """IDX format (LeCun): magic 0x0000 0x08 ndim, big-endian dims, then uint8 data."""
    if len(content) < 4 or content[:2] != b"\x00\x00" or content[2] != 0x08:
        raise DataError(f"{what} is not an IDX file of unsigned bytes")
    ndim = content[3]
    dims = np.frombuffer(content, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{what} holds {data.size} values, its header promises {int(np.prod(dims))}")
    return data.reshape(dims)


def _idx_images(dataset: str, folders: list[Path], download_to: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The verified idx files as {'train': (images (n, 28, 28) uint8, labels int64), 't10k': (...)}."""
    files = MNIST_FILES if dataset == "mnist" else FASHION_FILES
    blobs = fetch_files(dataset, files, folders, download_to)
    out = {}
    for prefix in ("train", "t10k"):
        x = parse_idx(blobs[f"{prefix}-images-idx3-ubyte"], f"{dataset} {prefix} images")  # (n, 28, 28)
        y = parse_idx(blobs[f"{prefix}-labels-idx1-ubyte"], f"{dataset} {prefix} labels").astype(np.int64)
        out[prefix] = (x, y)
    return out


def mnist_like(dataset: str, folders: list[Path], download_to: Path) -> Raw:
    files = MNIST_FILES if dataset == "mnist" else FASHION_FILES
    idx = _idx_images(dataset, folders, download_to)
    splits = {split: (idx[prefix][0][:, None], idx[prefix][1])  # (n, 1, 28, 28)
              for split, prefix in (("train", "train"), ("test", "t10k"))}
    return Raw("image", 256, splits, f"{dataset} original idx files", dict(files))


STACKED_POOLS = (("train", "train", slice(0, 50000)), ("val", "train", slice(50000, None)), ("test", "t10k", slice(None)))


def stacked_mnist(folders: list[Path], download_to: Path, n_train: int = 50000, n_val: int = 10000,
                  n_test: int = 10000, seed: int = 0) -> Raw:
    """Stacked MNIST, the 1,000-mode test of mode coverage (Metz et al. 2017, Unrolled GANs;
    Srivastava et al. 2017, VEEGAN; Lin et al. 2018, PacGAN).

    Each example stacks three MNIST images, drawn uniformly at random with replacement,
    as its channels: (3, 28, 28), 256 grey levels. Its label is the mode id
    100 * d0 + 10 * d1 + d2 (d_c: the digit of channel c), so there are 1,000 modes.
    No MNIST image is shared between splits: train stacks draw from the first 50,000
    MNIST training images, val from the last 10,000 (MNIST's usual validation set),
    test from the 10,000 t10k images. Split i (train, val, test = 0, 1, 2) draws with
    its own generator numpy.random.default_rng(seed + i).
    NOTE: the papers stack 128,000 (VEEGAN) or 25,600 (PacGAN) training examples from
    all 60,000 training images; 50,000 here keeps the validation images unseen.
    """
    sizes = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
    for key, value in {**sizes, "seed": seed}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "seed" else 1):
            raise DataError(f"stacked-mnist parameter {key} must be an integer >= {0 if key == 'seed' else 1}, got {value!r}")
    idx = _idx_images("mnist", folders, download_to)
    splits = {}
    for i, (split, prefix, rows) in enumerate(STACKED_POOLS):
        images, digits = idx[prefix][0][rows], idx[prefix][1][rows]
        pick = np.random.default_rng(seed + i).integers(0, len(images), size=(sizes[f"n_{split}"], 3))  # (n, 3)
        splits[split] = (images[pick], digits[pick] @ np.array([100, 10, 1], dtype=np.int64))  # (n, 3, 28, 28), (n,)
    source = (f"stacked MNIST: 3 MNIST images drawn uniformly (seed {seed} + split index) as channels, "
              "label 100*d0 + 10*d1 + d2; train from MNIST train[:50000], val from train[50000:], test from t10k")
    return Raw("image", 256, splits, source, dict(MNIST_FILES), modes=1000)


def binarized_mnist(folders: list[Path], download_to: Path) -> Raw:
    blobs = fetch_files("binarized-mnist", BINARIZED_FILES, folders, download_to)
    splits = {}
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        x = np.loadtxt(io.BytesIO(blobs[f"binarized_mnist_{name}.amat"]), dtype=np.uint8)  # (n, 784)
        splits[split] = (x.reshape(-1, 1, 28, 28), None)
    return Raw("binary", 2, splits, "binarized MNIST, fixed split of Larochelle & Murray 2011", dict(BINARIZED_FILES))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_folders(dataset: str, data_dir: str | None, project_raw: Path) -> list[Path]:
    """Where to look for raw files: the configured folder (or GENZOO_DATA_DIR), with and without a
    per-dataset sub-folder, then the project's download cache data/raw/<dataset>."""
    roots = [Path(p) for p in (data_dir, os.environ.get("GENZOO_DATA_DIR")) if p]
    for root in roots:
        if not root.is_dir():
            raise DataError(f"data folder {root} does not exist")
    folders = [f for root in roots for f in (root / dataset, root)]
    return folders + [project_raw / dataset]
