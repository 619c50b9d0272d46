"""Cached (incremental) autoregressive sampling: the same samples as the naive loop, far fewer operations.

- MADE (1 and 2 hidden layers, and none; 1 and 2 masks; natural and random orderings) and the Gated
  PixelCNN (binary and 4-level grey; 1 to 4 layers; square and non-square images, kernels wider than
  the image): for the same generator seed the cached and the naive sampler give identical samples;
- incremental: the cached sampler does at most one network pass of multiply-adds in all (counted by
  torch's FlopCounterMode), the naive one a pass per dimension;
- `sampler` is validated; 'cached' is the default.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.base import ConfigError
from models.made import MADE
from models.pixelcnn import PixelCNN

pytestmark = pytest.mark.usefixtures("one_thread")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def sharpened(model, scale: float = 3.0):
    """Random weights times `scale`: sharper conditionals than at initialisation, so samples vary a lot
    between pixels and a wrong conditional would show."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def made(shape=(10,), **kw) -> MADE:
    torch.manual_seed(0)
    return sharpened(MADE(MADE.Config(data_shape=shape, data_kind="binary", **kw)))


def pixelcnn(shape, kind="binary", **kw) -> PixelCNN:
    torch.manual_seed(0)
    kw = {"channels": 8, "layers": 3, "kernel": 3, "first_kernel": 7, **kw}
    return sharpened(PixelCNN(PixelCNN.Config(data_shape=shape, data_kind=kind, **kw)))


def with_sampler(model, sampler: str):
    model.config = dataclasses.replace(model.config, sampler=sampler)
    return model


def both_samplers(model, n: int, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    cached = with_sampler(model, "cached").sample(n, torch.Generator().manual_seed(seed))
    naive = with_sampler(model, "naive").sample(n, torch.Generator().manual_seed(seed))
    return cached, naive


MADES = {
    "1-layer-1-mask-natural": dict(hidden=(32,)),
    "1-layer-2-masks-random": dict(hidden=(32,), num_masks=2, natural_ordering=False),
    "2-layers-1-mask-random": dict(hidden=(24, 20), natural_ordering=False),
    "2-layers-2-masks-natural": dict(hidden=(24, 20), num_masks=2),
    "2-layers-2-masks-random-image": dict(shape=(1, 4, 5), hidden=(40, 30), num_masks=2, natural_ordering=False),
    "no-hidden-layer-2-masks": dict(hidden=(), num_masks=2, natural_ordering=False),
}

PIXELCNNS = {
    "binary-8x8-3-layers": dict(shape=(1, 8, 8)),
    "levels4-8x8-2-layers": dict(shape=(1, 8, 8), kind="image", levels=4, layers=2),
    "levels4-5x9-4-layers-k5": dict(shape=(1, 5, 9), kind="image", levels=4, layers=4, first_kernel=5),
    "binary-12x12-2-layers-k5": dict(shape=(1, 12, 12), layers=2, kernel=5, first_kernel=3),
    "levels3-3x4-1-layer": dict(shape=(1, 3, 4), kind="image", levels=3, layers=1),  # kernel wider than the image
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", MADES.values(), ids=MADES.keys())
def test_made_cached_samples_are_the_naive_ones(kw, device):
    model = made(**kw).to(device)
    cached, naive = both_samplers(model, 300)
    assert cached.shape == naive.shape == (300, *model.config.data_shape)
    assert torch.equal(cached, naive)
    assert 0.1 < cached.mean() < 0.9 and (cached.flatten(1) != cached.flatten(1)[:1]).any(1).float().mean() > 0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", PIXELCNNS.values(), ids=PIXELCNNS.keys())
def test_pixelcnn_cached_samples_are_the_naive_ones(kw, device, monkeypatch):
    # TF32 convolutions in the naive pass would round its logits to ~1e-3, not ~1e-7
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = pixelcnn(**kw).to(device)
    cached, naive = both_samplers(model, 64)
    assert cached.shape == naive.shape == (64, *model.config.data_shape)
    assert torch.equal(cached, naive)
    levels = 2 if model.config.data_kind == "binary" else model.config.levels
    k = cached * (levels - 1)
    assert torch.equal(k, torch.round(k)) and k.min() >= 0 and k.max() <= levels - 1 and len(k.unique()) > 1
    assert (cached.flatten(1) != cached.flatten(1)[:1]).any(1).float().mean() > 0.5  # the samples differ


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("build, one_pass", [
    (lambda: made(shape=(1, 4, 5), hidden=(32, 24), num_masks=2, natural_ordering=False),
     lambda m, x: [m.logits(x.flatten(1), 0)]),
    (lambda: pixelcnn((1, 6, 7), kind="image", levels=4), lambda m, x: m(x)),
], ids=["made", "pixelcnn"])
def test_cached_sampler_is_incremental(build, one_pass):
    """Multiply-adds counted at the dispatcher: the naive loop does one full pass per dimension, the
    cached sampler less than one pass in all (each unit or activation once, masked-out taps skipped)."""
    model, n = build(), 16
    dim = model.config.dim
    x = torch.zeros(n, *model.config.data_shape)
    per_pass = flops(lambda: one_pass(model, x))
    naive = flops(lambda: with_sampler(model, "naive").sample(n, torch.Generator().manual_seed(0)))
    cached = flops(lambda: with_sampler(model, "cached").sample(n, torch.Generator().manual_seed(0)))
    assert naive == dim * per_pass
    assert 0 < cached <= per_pass, (cached, per_pass)


def test_sampler_is_validated_and_cached_by_default():
    assert MADE.Config(data_shape=(4,), data_kind="binary").sampler == "cached"
    assert PixelCNN.Config(data_shape=(1, 4, 4), data_kind="binary").sampler == "cached"
    for cls, shape in ((MADE, [4]), (PixelCNN, [1, 4, 4])):
        with pytest.raises(ConfigError, match=r"sampler must be one of \('cached', 'naive'\), got 'fast'"):
            cls.Config.from_dict({"data_shape": shape, "data_kind": "binary", "sampler": "fast"})
        assert cls.Config.from_dict({"data_shape": shape, "data_kind": "binary", "sampler": "naive"}).sampler == "naive"
