"""Data: splits, manifests and checksums, the MNIST-family readers, and clear errors on bad files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

import data
from data import sources
from data.errors import DataError


def prep(spec, tmp_path, params=None, data_dir=None):
    name = data.dataset_name(spec)
    manifest = data.prepare(spec, tmp_path / name, params or {}, tmp_path / "raw", data_dir)
    return manifest, data.load(tmp_path / name, verify=True)


def test_ring8_and_grid25_follow_the_protocol(tmp_path):
    centers = sources.mode_centers("ring8")
    assert centers.shape == (8, 2) and np.allclose(np.linalg.norm(centers, axis=1), 1)
    assert not np.allclose(centers[0], centers[-1])  # endpoints not repeated
    grid = sources.mode_centers("grid25")
    assert sorted(set(grid[:, 0])) == [-4, -2, 0, 2, 4]
    m, d = prep("ring8", tmp_path, {"n_train": 800, "n_val": 100, "n_test": 100, "seed": 3, "std": 0.01})
    assert m["splits"] == {"train": 800, "val": 100, "test": 100} and m["kind"] == "points"
    dist = np.linalg.norm(d.arrays["train"][:, None] - centers[None], axis=-1).min(1)
    assert dist.max() < 0.06  # 6 std
    again, _ = prep("ring8", tmp_path / "again", {"n_train": 800, "n_val": 100, "n_test": 100, "seed": 3, "std": 0.01})
    assert again["arrays"] == m["arrays"] and again["hash"] == m["hash"]  # same seed, same data version


def test_digits_splits_are_fixed_and_disjoint(tmp_path):
    m, d = prep("digits", tmp_path, {"val_size": 180, "test_size": 180, "seed": 0})
    assert m["splits"] == {"train": 1437, "val": 180, "test": 180}
    assert m["shape"] == [1, 8, 8] and m["levels"] == 17 and m["value_range"] == [0.0, 16.0]
    from sklearn.datasets import load_digits

    together = np.concatenate([d.arrays[s].reshape(len(d.arrays[s]), -1) for s in ("train", "val", "test")])
    original = load_digits().images.reshape(1797, -1).astype(np.uint8)
    # the three splits are exactly a partition of the 1,797 images (each one once)
    assert np.array_equal(np.sort(together.view("V64"), axis=0), np.sort(original.view("V64"), axis=0))
    t = d.tensor("train")
    assert t.dtype.is_floating_point and float(t.min()) == 0 and float(t.max()) == 1


def test_mnist_files_from_a_local_folder(tmp_path, raw_data_dir):
    m, d = prep("mnist", tmp_path, {"val_size": 10000}, data_dir=str(raw_data_dir))
    assert m["splits"] == {"train": 50000, "val": 10000, "test": 10000}
    assert d.arrays["train"].shape == (50000, 1, 28, 28) and d.arrays["train"].dtype == np.uint8
    assert np.bincount(d.arrays["test_labels"]).tolist()[:3] == [980, 1135, 1032]
    assert set(m["raw_files"]) == set(sources.MNIST_FILES)


def test_binarized_mnist_keeps_the_fixed_split(tmp_path, raw_data_dir):
    m, d = prep("binarized-mnist", tmp_path, {}, data_dir=str(raw_data_dir))
    assert m["splits"] == {"train": 50000, "val": 10000, "test": 10000} and m["kind"] == "binary"
    assert abs(d.arrays["test"].mean() - 0.1325) < 1e-3


def test_manifest_checksums_catch_altered_arrays(tmp_path):
    _, d = prep("digits", tmp_path)
    arr = tmp_path / "digits" / "train.npy"
    x = np.load(arr)
    x[0, 0, 0, 0] += 1
    np.save(arr, x)
    with pytest.raises(DataError, match="does not match the sha256 in its manifest"):
        data.load(tmp_path / "digits", verify=True)


def _copy_mnist(raw_data_dir: Path, to: Path) -> Path:
    shutil.copytree(raw_data_dir / "mnist", to / "mnist")
    return to


def test_truncated_gzip_is_named(tmp_path, raw_data_dir):
    folder = _copy_mnist(raw_data_dir, tmp_path / "bad")
    f = folder / "mnist" / "t10k-labels-idx1-ubyte.gz"
    f.chmod(0o644)
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is corrupt or truncated"):
        prep("mnist", tmp_path / "out", data_dir=str(folder))
    assert not (tmp_path / "out" / "mnist").exists()  # nothing half-written


def test_altered_file_fails_its_checksum(tmp_path, raw_data_dir):
    folder = _copy_mnist(raw_data_dir, tmp_path / "bad")
    f = folder / "mnist" / "t10k-labels-idx1-ubyte.gz"
    f.chmod(0o644)
    content = bytearray(gzip.decompress(f.read_bytes()))
    content[100] = (content[100] + 1) % 10
    f.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError, match="does not match the published mnist file"):
        prep("mnist", tmp_path / "out", data_dir=str(folder))


def test_missing_data_folder_is_named(tmp_path):
    with pytest.raises(DataError, match="data folder .*nowhere does not exist"):
        prep("mnist", tmp_path, data_dir=str(tmp_path / "nowhere"))


def test_idx_header_mismatch():
    with pytest.raises(DataError, match="header promises"):
        sources.parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "x")


def test_user_arrays_and_their_errors(tmp_path):
    good = tmp_path / "mydata.npy"
    np.save(good, np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32))
    m, d = prep(str(good), tmp_path / "out")
    assert m["name"] == "mydata" and m["kind"] == "points" and sum(m["splits"].values()) == 100
    nan = tmp_path / "withnan.npy"
    x = np.zeros((50, 3))
    x[3, 1] = np.nan
    np.save(nan, x)
    with pytest.raises(DataError, match="NaN"):
        prep(str(nan), tmp_path / "out")
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros(30))
    with pytest.raises(DataError, match=r"has shape \(30,\)"):
        prep(str(flat), tmp_path / "out")
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not numpy")
    with pytest.raises(DataError, match="not a readable .npy array"):
        prep(str(junk), tmp_path / "out")
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        data.dataset_name("nope")
    with pytest.raises(DataError, match="unknown prepare parameter 'bogus'"):
        prep("digits", tmp_path / "out", {"bogus": 1})


def test_image_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    m, d = prep(str(folder), tmp_path / "out")
    assert m["name"] == "faces" and m["kind"] == "image" and m["shape"] == [1, 8, 8]
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(folder / "odd.png")
    with pytest.raises(DataError, match="different sizes"):
        prep(str(folder), tmp_path / "out2")
    (folder / "odd.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="odd.png is corrupt"):
        prep(str(folder), tmp_path / "out3")


def test_evaluation_subsets_are_seeded_random_rows_not_the_first(tmp_path):
    data.prepare("digits", tmp_path / "digits", {}, tmp_path / "raw")
    prepared = data.load(tmp_path / "digits")
    test = prepared.arrays["test"]
    a, b = prepared.subset("test", 50, seed=3), prepared.subset("test", 50, seed=3)
    assert a.shape == (50, 1, 8, 8) and bool((a == b).all())  # reproducible from the seed
    assert not bool((a == prepared.tensor("test", 50)).all())  # not the file's first rows
    rows = {bytes(r) for r in test.astype(np.uint8)}
    assert all(bytes((r * 16).round().numpy().astype(np.uint8)) in rows for r in a)  # rows of the split itself
    assert bool((prepared.subset("test", 0, seed=3) == prepared.tensor("test")).all())  # 0: the whole split
    assert len(prepared.subset("test", 10 ** 6, seed=3)) == len(test)


def test_colour_image_folder_keeps_its_channels(tmp_path):
    """Data read as given: RGB images stay (N, 3, H, W) with 256 levels (a palette image is read as RGB)."""
    from PIL import Image

    folder = tmp_path / "colour"
    folder.mkdir()
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (6, 8, 3), dtype=np.uint8) for _ in range(12)]
    for i, px in enumerate(pictures):
        Image.fromarray(px).save(folder / f"{i:02d}.png")
    m, d = prep(str(folder), tmp_path / "out")
    assert m["kind"] == "image" and m["shape"] == [3, 6, 8] and m["levels"] == 256
    stored = np.concatenate([d.arrays[s] for s in ("train", "val", "test")])
    originals = {px.transpose(2, 0, 1).tobytes() for px in pictures}
    assert {row.tobytes() for row in stored} == originals  # every channel value kept exactly
    Image.fromarray(pictures[0]).quantize(8).save(folder / "palette.png")  # mode P: read as RGB, not refused
    m, _ = prep(str(folder), tmp_path / "out2")
    assert m["shape"] == [3, 6, 8] and sum(m["splits"].values()) == 13


def test_image_folders_that_cannot_be_read_as_given_are_refused(tmp_path):
    from PIL import Image

    from data import user

    rng = np.random.default_rng(0)

    def folder(name, arrays):
        f = tmp_path / name
        f.mkdir()
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(f / f"{i:02d}.png")
        return f

    sixteen = folder("sixteen", [rng.integers(0, 65535, (8, 8), dtype=np.uint16) for _ in range(12)])
    with pytest.raises(DataError, match="16-bit greyscale image .* will not clip"):
        user.read(sixteen)  # the prepare step's own check (defence in depth), not only plan's
    mixed = folder("mixed", [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(11)]
                   + [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)])
    with pytest.raises(DataError, match=r"mix greyscale and colour: L \(00.png\), RGB \(11.png\)"):
        user.read(mixed)
    alpha = folder("alpha", [rng.integers(0, 256, (8, 8, 4), dtype=np.uint8) for _ in range(12)])
    with pytest.raises(DataError, match="alpha channel"):
        user.read(alpha)


def test_decompression_bomb_is_a_sentence(tmp_path, monkeypatch):
    """PIL's guard (a warning over MAX_IMAGE_PIXELS, an error over twice that) becomes a DataError."""
    from PIL import Image

    from data import user

    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(folder / f"{i}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 pixels: over the limit, under twice it
    with pytest.raises(DataError, match="decompression-bomb limit"):
        user.inspect(folder)


def test_array_headers_are_checked_before_the_data_is_read(tmp_path):
    """A header claiming 10^12 rows, a truncated file, object data: refused from the header alone."""
    import zipfile

    from data import user

    claims = tmp_path / "claims.npy"
    with open(claims, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 12, 2)})
    assert claims.stat().st_size < 200
    with pytest.raises(DataError, match="8,000,000,000,000 bytes of data .* more than the limit"):
        user.inspect(claims)
    cut = tmp_path / "cut.npz"
    np.savez(cut, x=np.zeros((50, 2)))
    with zipfile.ZipFile(cut) as z:
        member = z.read("x.npy")
    with zipfile.ZipFile(cut, "w") as z:
        z.writestr("x.npy", member[:-16])
    with pytest.raises(DataError, match="array 'x' in .*cut.npz holds .* bytes but its header promises"):
        user.inspect(cut)
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([None] * 20, dtype=object).reshape(10, 2))
    with pytest.raises(DataError, match="holds object data; genzoo reads plain numeric arrays only"):
        user.inspect(objects)


def test_npy_is_memory_mapped_and_values_checked_in_chunks(tmp_path, monkeypatch):
    from data import user

    big = tmp_path / "rows.npy"
    x = np.zeros((5000, 4), dtype=np.float32)
    x[4321, 2] = np.inf
    np.save(big, x)
    monkeypatch.setattr(user, "CHUNK_BYTES", 1600)  # 100 rows a chunk
    h = user.inspect(big)
    assert isinstance(user._array(h), np.memmap)
    with pytest.raises(DataError, match="first in row 4321"):
        user.check_values(h)
