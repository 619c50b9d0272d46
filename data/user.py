"""A user's own dataset: a `.npy` / `.npz` array file or a folder of PNG/JPEG images.

Read in two steps, so a bad file is refused before anything starts:

1. `inspect(path)` reads headers only (the .npy header, the .npz members' headers, each image's
   size and mode through PIL without decoding its pixels), bounds the size and says what the
   dataset is (`Header`). `tasks/plan.py: plan` calls it with the value scan (`check`) before any
   service starts.
2. `read(path)` (the prepare step) inspects again (defence in depth), then reads the data:
   a memory-mapped .npy, the .npz member, or the images decoded one by one into one preallocated
   array, checking values in chunks.

Size limit: a dataset may hold at most `GENZOO_MAX_DATASET_BYTES` bytes in memory (default
`DEFAULT_MAX_BYTES`, 2 GiB), counted from the header, so a 300-byte file claiming 10^12 rows is
refused without allocating anything.

Images keep what they are: greyscale (L) gives (N, 1, H, W), colour (RGB, or a palette image read
as RGB) gives (N, 3, H, W), 256 levels. 16-bit images, alpha channels, other modes, mixed modes
or sizes in one folder and images over PIL's decompression-bomb limit are refused with a sentence.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from data.errors import DataError
from data.sources import Raw, sha256_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
MIN_ROWS = 10  # the split needs train, validation and test examples
MAX_BYTES_ENV = "GENZOO_MAX_DATASET_BYTES"
DEFAULT_MAX_BYTES = 2 * 1024 ** 3
CHUNK_BYTES = 64 * 1024 ** 2  # value checks read this much at a time
NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float
# PIL image mode -> channels kept; palette images ("P") are read as RGB, bilevel ("1") as L (lossless).
IMAGE_MODES = {"L": ("L", 1), "1": ("L", 1), "RGB": ("RGB", 3), "P": ("RGB", 3)}
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


@dataclasses.dataclass(frozen=True)
class Header:
    """What a user dataset holds, read from headers only."""

    path: Path
    form: str  # 'npy' | 'npz' | 'images'
    shape: tuple[int, ...]  # as stored (images: (N, C, H, W))
    dtype: np.dtype
    member: str | None = None  # the .npz member read ('x', else the first)
    images: tuple[Path, ...] = ()
    mode: str = ""  # images: the PIL mode they are read in ('L' or 'RGB')

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize


def max_bytes() -> int:
    """The size limit in bytes (GENZOO_MAX_DATASET_BYTES, else DEFAULT_MAX_BYTES)."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    if not text.isdigit() or int(text) <= 0:
        raise DataError(f"{MAX_BYTES_ENV} must be a positive number of bytes, got '{text}'")
    return int(text)


# ---------------------------------------------------------------------- headers
def inspect(path: Path, min_rows: int = MIN_ROWS) -> Header:
    """The dataset's header, checked: readable, numeric, at least `min_rows` rows, within the size limit."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset path {path} does not exist")
    if path.is_dir():
        header = _image_headers(path)
        _check_header(header, min_rows)
        return header
    if path.suffix == ".npy":
        return _npy_header(path, min_rows)
    if path.suffix == ".npz":
        return _npz_header(path, min_rows)
    raise DataError(f"{path} is not a .npy/.npz file or a folder of images")


def _read_npy_header(fh, what: str) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, dtype, fortran_order) of the .npy stream `fh`, positioned at its data afterwards."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise DataError(f"{what} is not a readable .npy array ({_first_line(exc)})") from None
    return tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran)


def _npy_header(path: Path, min_rows: int) -> Header:
    with open(path, "rb") as fh:
        shape, dtype, _ = _read_npy_header(fh, str(path))
        offset = fh.tell()
    _check_dtype(dtype, str(path))
    header = Header(path, "npy", shape, dtype)
    _check_header(header, min_rows)  # a header claiming 10^12 rows is refused by size, not as truncated
    expected = offset + header.nbytes
    size = path.stat().st_size
    if size != expected:
        raise DataError(f"{path} holds {size} bytes but its header promises {expected} (shape {shape}, {dtype}): "
                        f"the file is truncated or altered")
    return header


def _npz_header(path: Path, min_rows: int) -> Header:
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not a readable .npz archive (a zip file of .npy arrays)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = [i for i in archive.infolist() if i.filename.endswith(".npy")]
            if not members:
                raise DataError(f"{path} holds no arrays")
            info = next((i for i in members if i.filename == "x.npy"), members[0])
            with archive.open(info) as fh:
                shape, dtype, _ = _read_npy_header(fh, f"array '{info.filename[:-4]}' in {path}")
                offset = fh.tell()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:  # e.g. a truncated archive
        raise DataError(f"{path} is not a readable .npz archive ({_first_line(exc)})") from None
    what = f"array '{info.filename[:-4]}' in {path}"
    _check_dtype(dtype, what)
    header = Header(path, "npz", shape, dtype, member=info.filename[:-4])
    _check_header(header, min_rows)
    expected = offset + header.nbytes
    if info.file_size != expected:
        raise DataError(f"{what} holds {info.file_size} bytes but its header promises {expected} "
                        f"(shape {shape}, {dtype}): the archive is truncated or altered")
    return header


def _check_dtype(dtype: np.dtype, what: str) -> None:
    if dtype.hasobject:
        raise DataError(f"{what} holds object data; genzoo reads plain numeric arrays only")
    if dtype.kind not in NUMERIC_KINDS:
        raise DataError(f"{what} holds {dtype} values; genzoo reads plain numeric arrays only "
                        f"(booleans, integers or real numbers)")


def _check_header(h: Header, min_rows: int) -> None:
    if len(h.shape) not in (2, 3, 4):
        raise DataError(f"{h.path} has shape {h.shape}; expected (N, D), (N, H, W) or (N, C, H, W)")
    if h.shape[0] < min_rows:
        raise DataError(f"{h.path} has shape {h.shape}; expected at least {min_rows} examples as rows")
    if any(d == 0 for d in h.shape[1:]):
        raise DataError(f"{h.path} has shape {h.shape}; every example needs at least one value")
    limit = max_bytes()
    if h.nbytes > limit:
        raise DataError(f"{h.path} holds {h.nbytes:,} bytes of data (shape {h.shape}, {h.dtype}), more than the "
                        f"limit of {limit:,} bytes (set {MAX_BYTES_ENV} to raise it)")


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"folder {folder} holds no PNG or JPEG images")
    return files


def _open_image(f: Path):
    """PIL's lazy open (header only), its decompression-bomb guard turned into a DataError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(f)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"image {f} has more pixels than PIL's decompression-bomb limit "
                        f"({Image.MAX_IMAGE_PIXELS:,} pixels); genzoo refuses it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"image {f} is corrupt or unreadable ({_first_line(exc)})") from None


def _image_mode(f: Path, mode: str) -> tuple[str, int]:
    """The mode an image is read in and its channels, or a sentence saying why genzoo refuses it."""
    if mode in IMAGE_MODES:
        return IMAGE_MODES[mode]
    if mode in SIXTEEN_BIT_MODES:
        raise DataError(f"image {f} is a 16-bit greyscale image (mode {mode}); genzoo reads 8-bit images only and "
                        f"will not clip it: convert it to 8 bits, or save the values as a .npy array")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        raise DataError(f"image {f} has an alpha channel (mode {mode}); genzoo reads greyscale (L) or colour (RGB) "
                        f"images: save it without transparency")
    raise DataError(f"image {f} has mode {mode}; genzoo reads greyscale (L) or colour (RGB) 8-bit images only")


def _image_headers(folder: Path) -> Header:
    files = _image_files(folder)
    sizes: dict[tuple[int, int], Path] = {}
    modes: dict[str, Path] = {}
    for f in files:
        with _open_image(f) as im:
            mode, _ = _image_mode(f, im.mode)
            sizes.setdefault(im.size, f)
            modes.setdefault(mode, f)
            if f.suffix.lower() == ".png":  # chunk checksums, without decoding the pixels
                try:
                    im.verify()
                except Exception as exc:  # PIL raises many kinds (SyntaxError, OSError, struct.error)
                    raise DataError(f"image {f} is corrupt or unreadable ({_first_line(exc)})") from None
    if len(sizes) > 1:
        listed = ", ".join(f"{w}x{h} ({p.name})" for (w, h), p in sorted(sizes.items()))
        raise DataError(f"images in {folder} have different sizes: {listed}; genzoo needs one size")
    if len(modes) > 1:
        listed = ", ".join(f"{m} ({p.name})" for m, p in sorted(modes.items()))
        raise DataError(f"images in {folder} mix greyscale and colour: {listed}; genzoo needs one mode")
    (width, height), = sizes
    mode, = modes
    channels = IMAGE_MODES[mode][1]
    return Header(folder, "images", (len(files), channels, height, width), np.dtype(np.uint8),
                  images=tuple(files), mode=mode)


# ---------------------------------------------------------------------- values
_SCANNED: set[tuple[str, int, int]] = set()  # array files whose values were found finite: (path, size, mtime)


def check(path: Path) -> Header:
    """`inspect` and `check_values`, the value scan once per version of a file in this process: the
    CLI's `plan` and the flow's `plan` both check a dataset, and a large one need not be read twice."""
    h = inspect(path)
    if h.form == "images":
        return h
    st = h.path.stat()
    version = (str(h.path.resolve()), st.st_size, st.st_mtime_ns)
    if version not in _SCANNED:
        check_values(h)
        _SCANNED.add(version)
    return h


def check_values(h: Header, x: np.ndarray | None = None) -> None:
    """Finite values (floats), read in chunks: a memory-mapped .npy never loads whole. `x`: the
    array already read (the prepare step), else it is opened from the header."""
    if h.dtype.kind != "f":
        return
    for start, chunk in _chunks(h, _array(h) if x is None else x):
        if not np.isfinite(chunk).all():
            row = start + int(np.argwhere(~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1))[0, 0])
            raise DataError(f"{h.path} contains NaN or infinite values (first in row {row})")


def _chunks(h: Header, x: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    rows = max(1, CHUNK_BYTES // max(1, h.nbytes // h.shape[0]))
    for start in range(0, h.shape[0], rows):
        yield start, np.asarray(x[start:start + rows])


def _array(h: Header) -> np.ndarray:
    """The array behind an (inspected) array file: memory-mapped .npy, loaded .npz member (size bounded)."""
    try:
        if h.form == "npy":
            return np.load(h.path, mmap_mode="r", allow_pickle=False)
        with np.load(h.path, allow_pickle=False) as archive:
            return archive[h.member]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{h.path} is not a readable numpy array file ({_first_line(exc)})") from None


# ---------------------------------------------------------------------- the full read
def read(path: Path) -> Raw:
    """The user's dataset as a `Raw`, checked again from its headers before it is read."""
    h = inspect(path)
    if h.form == "images":
        x = _decode_images(h)
        files = {f.name: sha256_file(f) for f in h.images}
    else:
        x = _array(h)
        check_values(h, x)
        files = {h.path.name: sha256_file(h.path)}
    x = x[:, None] if x.ndim == 3 else x  # (N, H, W) -> (N, 1, H, W); inspect allowed 2, 3 or 4 dimensions
    return Raw(*_kind(x), {"all": (x, None)}, f"user data {h.path}", files)


def _kind(x: np.ndarray) -> tuple[str, int]:
    """(data kind, levels) from the values: binary when they are all 0 or 1, 8-bit images, else points."""
    values = np.unique(x) if x.size <= 50_000_000 else None
    if values is not None and set(values.tolist()) <= {0, 1}:
        return "binary", 2
    if x.ndim >= 3 and x.dtype == np.uint8:
        return "image", 256
    return "points", 0


def _decode_images(h: Header) -> np.ndarray:
    """Every image decoded into one preallocated (N, C, H, W) uint8 array, each checked against the header."""
    out = np.empty(h.shape, dtype=np.uint8)
    for i, f in enumerate(h.images):
        with _open_image(f) as im:
            mode, _ = _image_mode(f, im.mode)
            if mode != h.mode or im.size != (h.shape[3], h.shape[2]):
                raise DataError(f"image {f} changed while it was read (now {im.mode} {im.size[0]}x{im.size[1]})")
            try:
                pixels = np.asarray(im.convert(mode))  # (H, W) or (H, W, 3)
            except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt pixel data
                raise DataError(f"image {f} is corrupt or unreadable ({_first_line(exc)})") from None
        out[i] = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
