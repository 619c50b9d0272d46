"""genzoo/evaluation/inception.py without the network: the offline failure, the preprocessing contract, the config switch.

No test here downloads or runs the real Inception-v3 file (the test machines are offline);
the stand-in below only checks genzoo's side of the call.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.errors import DataError
from genzoo.evaluation import inception
from genzoo.config import EvalConfig
from models.base import ConfigError

CLOSED_PORT = "http://127.0.0.1:9/inception-2015-12-05.pt"  # discard port: nothing listens there


class _ChannelMeans(torch.nn.Module):
    """Same call signature as the TorchScript Inception; returns the per-channel means of its input."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # (n, C)


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """An empty cache folder, no local file, and a download address that cannot be reached."""
    monkeypatch.delenv(inception.PATH_ENV, raising=False)
    monkeypatch.setenv(inception.URL_ENV, CLOSED_PORT)
    monkeypatch.setattr(inception, "CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_unreachable_download_raises_data_error_and_leaves_no_part_file(offline_cache):
    with pytest.raises(DataError) as err:
        inception.inception_features(np.zeros((2, 1, 8, 8), np.float32))
    message = str(err.value)
    assert inception.FILENAME in message and "offline" in message and inception.PATH_ENV in message
    assert list(offline_cache.iterdir()) == []  # neither the .pt, its .part nor a .sha256


def test_missing_local_file_raises_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv(inception.PATH_ENV, str(tmp_path / "absent.pt"))
    with pytest.raises(DataError, match="is not a file"):
        inception.inception_features(np.zeros((2, 1, 8, 8), np.float32))


def test_file_that_is_not_torchscript_raises_data_error(tmp_path, monkeypatch):
    bad = tmp_path / "inception-2015-12-05.pt"
    bad.write_text("<html>not a network</html>")
    monkeypatch.setenv(inception.PATH_ENV, str(bad))
    with pytest.raises(DataError, match="not a loadable TorchScript file"):
        inception.load("cpu")


def test_changed_cached_file_is_caught_by_the_recorded_digest(offline_cache):
    offline_cache.mkdir()
    path = offline_cache / inception.FILENAME
    path.write_bytes(b"downloaded")
    path.with_name(path.name + ".sha256").write_text(inception.sha256_file(path) + "\n")
    assert inception.network_file() == path  # present and unchanged: no download attempted
    path.write_bytes(b"changed")
    with pytest.raises(DataError, match="SHA-256"):
        inception.network_file()


def test_preprocessing_contract_with_a_stand_in_network(tmp_path, monkeypatch):
    """genzoo's side of the call only (not the real network): a 1-channel [0, 1] image reaches the
    network as 3 identical channels of whole grey levels 0..255, batched, and comes back float64."""
    stand_in = tmp_path / "stand-in.pt"
    torch.jit.save(torch.jit.script(_ChannelMeans()), str(stand_in))
    monkeypatch.setenv(inception.PATH_ENV, str(stand_in))
    levels = torch.arange(5, dtype=torch.float32) / 4  # 0, 0.25, ..., 1
    x = levels.view(5, 1, 1, 1).expand(5, 1, 6, 7).contiguous()  # (5, 1, 6, 7) constant images
    feats = inception.inception_features(x, batch_size=2)  # three batches: 2, 2, 1
    assert feats.dtype == np.float64 and feats.shape == (5, 3)
    expected = np.round(255 * levels.numpy()).astype(np.float64)  # 0, 64, 128, 191, 255
    np.testing.assert_array_equal(feats, np.repeat(expected[:, None], 3, axis=1))


def test_images_outside_unit_range_are_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv(inception.PATH_ENV, str(tmp_path / "never-loaded.pt"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inception.inception_features(np.full((2, 1, 4, 4), 255.0, np.float32))


def test_eval_config_fid_network():
    assert EvalConfig().fid_network == "evaluator"
    assert EvalConfig(fid_network="inception").fid_network == "inception"
    with pytest.raises(ConfigError, match="evaluator or inception"):
        EvalConfig(fid_network="foo")


class _FakePrepared:
    name, kind = "tiny", "image"

    def subset(self, split: str, n: int | None, seed: int) -> torch.Tensor:
        return torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))[:n or None]  # (40, 1, 8, 8)


@pytest.mark.filterwarnings("ignore::genzoo.evaluation.quality.SmallSampleWarning")
def test_image_quality_adds_inception_fid_only_when_asked(tmp_path, monkeypatch):
    """genzoo.evaluation.protocol.image_quality wiring, with a stand-in for the network: the default returns no
    Inception keys; fid_network 'inception' adds inception_fid and inception_fid_samples."""
    from genzoo.evaluation import networks
    from genzoo.evaluation.networks import Evaluator, EvaluatorConfig
    from genzoo.evaluation.protocol import image_quality

    torch.manual_seed(0)
    net = Evaluator(EvaluatorConfig(image_shape=(1, 8, 8), num_classes=10, width=4, feature_dim=6)).eval()
    monkeypatch.setattr(networks, "load", lambda folder: (net, {"test_accuracy": 0.9}))
    stand_in = tmp_path / "stand-in.pt"
    torch.jit.save(torch.jit.script(_ChannelMeans()), str(stand_in))
    monkeypatch.setenv(inception.PATH_ENV, str(stand_in))
    samples = np.random.default_rng(0).random((30, 1, 8, 8)).astype(np.float32)
    default = image_quality(samples, _FakePrepared(), "unused", EvalConfig(real_examples=40, seed=0))
    assert "inception_fid" not in default
    extra = image_quality(samples, _FakePrepared(), "unused", EvalConfig(real_examples=40, seed=0,
                                                                         fid_network="inception"))
    assert extra["inception_fid_samples"] == 30 and np.isfinite(extra["inception_fid"])
    assert extra["fid"] == default["fid"]  # the default metrics are unchanged by the option
