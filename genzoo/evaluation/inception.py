"""The standard FID Inception-v3 network, as an optional second ruler for image FID.

genzoo's default FID, KID, precision/recall and density/coverage use each image
dataset's own evaluator CNN (genzoo/evaluation/networks.py). With `evaluate.fid_network:
inception` in params.yaml, image evaluation also reports `inception_fid`: the FID
(genzoo.evaluation.quality.frechet_distance) of the same samples against the same real test
images, on Inception-v3 features.

Protocol
- Network: the TensorFlow FID Inception-v3 graph of Heusel et al. (2017),
  `inception-2015-12-05.tgz`, as the TorchScript translation that NVIDIA publishes
  with the StyleGAN2-ADA metrics and that clean-fid (Parmar et al., 2022) also uses:
  URL below. It is loaded with torch.jit.load, so torchvision is not needed.
- Features: `net(x, return_features=True)`, the 2048-d pool_3 activations before the
  softmax layer, one float64 row per image.
- Input: images (n, C, H, W) in [0, 1] are scaled to 0..255 and rounded to whole
  grey levels (what an 8-bit image file holds; StyleGAN2-ADA feeds uint8), then
  passed as float32 NCHW. Single-channel images are repeated to 3 identical channels
  (as StyleGAN2-ADA does). The network itself resizes to 299x299 (bilinear) and
  maps 0..255 to [-1, 1].
- File: downloaded once into ~/.cache/genzoo/inception/ (written to a .part file,
  then renamed), or taken from GENZOO_INCEPTION_PATH (a local copy of the .pt file,
  for offline machines; it is never downloaded over). No digest of the file is
  published by NVIDIA or clean-fid, so the SHA-256 of the first download is recorded
  next to it (`inception-2015-12-05.pt.sha256`) and checked on every later load: this
  catches a file changed after download, not a bad first download.

NOTE: never the default. MNIST-like data (digits, strokes, binarized pixels) are not
natural images; Inception features, trained on ImageNet photographs, are the wrong
ruler there (a 28x28 digit upsampled to 299x299 lands far from anything ImageNet
taught the network), and numbers on them are not comparable with published FIDs on
natural-image datasets anyway. The evaluator network, trained on the dataset itself,
is the ruler that ranks genzoo models; the Inception FID is an extra column.
"""

from __future__ import annotations

import http.client
import itertools
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.errors import DataError
from data.sources import sha256_file
from genzoo.evaluation.networks import _images

URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
FILENAME = "inception-2015-12-05.pt"
CACHE = "~/.cache/genzoo/inception"  # expanded when used, never at import time
PATH_ENV = "GENZOO_INCEPTION_PATH"  # a local .pt file: use it, never download
URL_ENV = "GENZOO_INCEPTION_URL"  # another download address (a mirror; tests use a closed port)
TIMEOUT_SECONDS = 60.0


def _download(url: str, target: Path) -> None:
    """url -> target through target.part (removed on any failure), then record its SHA-256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response, open(part, "wb") as f:
            for block in iter(lambda: response.read(1 << 20), b""):
                f.write(block)
        os.replace(part, target)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"the FID Inception network {target.name} is not in {target.parent} and could not be downloaded from "
            f"{url} ({reason}), so this machine seems offline (or the address moved): copy the file onto it and "
            f"set {PATH_ENV} to its path (or set evaluate.fid_network: evaluator in params.yaml)") from None
    finally:
        part.unlink(missing_ok=True)  # gone after the rename; a partial file never stays behind
    target.with_name(target.name + ".sha256").write_text(sha256_file(target) + "\n")


def network_file() -> Path:
    """The local .pt file: GENZOO_INCEPTION_PATH if set, else the cache (downloaded on first use)."""
    local = os.environ.get(PATH_ENV)
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            raise DataError(f"{PATH_ENV}={local} is not a file: point it at a copy of {FILENAME} ({URL})")
        return path
    path = Path(CACHE).expanduser() / FILENAME
    if not path.is_file():
        _download(os.environ.get(URL_ENV) or URL, path)
    recorded = path.with_name(path.name + ".sha256")
    if recorded.is_file() and sha256_file(path) != recorded.read_text().strip():
        raise DataError(f"{path} no longer matches the SHA-256 recorded at download ({recorded}): "
                        "delete both files to download it again")
    return path


def load(device: str | torch.device | None = None) -> torch.jit.ScriptModule:
    """The TorchScript network on `device` (default: cuda when available, else cpu), in eval mode."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = network_file()
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as exc:
        raise DataError(f"{path} is not a loadable TorchScript file ({str(exc).splitlines()[0]}): "
                        f"replace it with {FILENAME} from {URL}") from None


@torch.no_grad()
def inception_features(images: Any, net: torch.jit.ScriptModule | None = None, batch_size: int = 64) -> np.ndarray:
    """Inception pool features of images (n, C, H, W) in [0, 1], as float64 (n, 2048); see the module protocol."""
    x = _images("images", images)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {x.shape[1]}")
    net = load() if net is None else net
    device = next(itertools.chain(net.parameters(), net.buffers()), torch.empty(0)).device  # where load() put it
    rows = []
    for i in range(0, len(x), batch_size):
        batch = (x[i:i + batch_size] * 255).round()  # (b, C, H, W) whole grey levels 0..255
        if batch.shape[1] == 1:
            batch = batch.repeat(1, 3, 1, 1)  # (b, 3, H, W) grey -> identical RGB channels
        rows.append(net(batch.to(device), return_features=True).reshape(len(batch), -1).double().cpu())
    return torch.cat(rows).numpy()  # (n, 2048) for the real network
