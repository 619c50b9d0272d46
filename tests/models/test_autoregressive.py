"""The mathematics of the autoregressive families (MADE, Gated PixelCNN).

- normalisation: exact probabilities over every configuration of a tiny input sum to 1;
- the autoregressive property: output i depends on exactly the inputs before i
  (MADE: Jacobian and mask connectivity; PixelCNN: the exact receptive field, no blind spot);
- the samplers draw from the distribution the likelihood describes (empirical vs exact);
- brief training beats the independent-Bernoulli baseline; seeds reproduce samples and masks.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from models.base import ConfigError
from models.made import MADE, made_masks
from models.pixelcnn import PixelCNN


pytestmark = pytest.mark.usefixtures("one_thread")


def all_configurations(shape: tuple[int, ...], levels: int = 2) -> torch.Tensor:
    """Every discrete input of `shape` with values k/(levels-1): (levels^D, *shape)."""
    grid = torch.tensor(list(itertools.product(range(levels), repeat=math.prod(shape))), dtype=torch.float32)
    return (grid / (levels - 1)).view(-1, *shape)


def two_prototypes(n: int, shape: tuple[int, ...], seed: int, flip: float = 0.05) -> torch.Tensor:
    """Half the examples are the pattern (first half of the pixels on), half its complement, 5% bits flipped.

    Every marginal is 1/2, so the independent model gets ~ -D ln 2, while the truth is ~ -ln 2 - D H(0.05).
    """
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    proto = (torch.arange(d) < d // 2).float()  # (D,)
    which = torch.randint(2, (n, 1), generator=g).float()  # (n, 1)
    x = which * proto + (1 - which) * (1 - proto)  # (n, D)
    flips = (torch.rand(n, d, generator=g) < flip).float()
    return ((x + flips) % 2).view(n, *shape)


def train(model, data: torch.Tensor, steps: int, batch: int = 64) -> None:
    torch.manual_seed(0)
    opts = model.configure_optimizers()
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        out = model.training_step(data[torch.randint(len(data), (batch,), generator=g)], opts)
        assert math.isfinite(out["loss"])


def independent_bernoulli_ll(train_x: torch.Tensor, test_x: torch.Tensor) -> float:
    p = train_x.flatten(1).mean(0).clamp(1e-3, 1 - 1e-3)  # (D,)
    t = test_x.flatten(1)
    return (t * p.log() + (1 - t) * (1 - p).log()).sum(-1).mean().item()


def made(shape=(10,), **kw) -> MADE:
    torch.manual_seed(0)
    return MADE(MADE.Config(data_shape=shape, data_kind="binary", **kw))


def pixelcnn(shape=(1, 2, 5), kind="binary", **kw) -> PixelCNN:
    torch.manual_seed(0)
    kw = {"channels": 16, "layers": 3, "kernel": 3, "first_kernel": 3, **kw}
    return PixelCNN(PixelCNN.Config(data_shape=shape, data_kind=kind, **kw))


def total_probability(model, shape, levels=2) -> tuple[float, torch.Tensor]:
    ll = model.log_likelihood(all_configurations(shape, levels))  # (levels^D,)
    return torch.logsumexp(ll.double(), 0).exp().item(), ll


# -- normalisation ------------------------------------------------------------
@pytest.mark.parametrize(
    "build, shape, levels",
    [
        (lambda: made(hidden=(32, 32), num_masks=3, natural_ordering=False, lr=1e-2), (10,), 2),
        (lambda: made(hidden=(32,), num_masks=1, natural_ordering=True, lr=1e-2), (10,), 2),
        (lambda: pixelcnn(lr=1e-2), (1, 2, 5), 2),
        (lambda: pixelcnn(shape=(1, 2, 2), kind="image", levels=3, lr=1e-2), (1, 2, 2), 3),
    ],
    ids=["made-ensemble", "made-natural", "pixelcnn-binary", "pixelcnn-levels3"],
)
def test_probabilities_over_all_configurations_sum_to_one(build, shape, levels):
    model = build()
    total, _ = total_probability(model, shape, levels)
    assert abs(total - 1) < 1e-4
    kind = "binary" if levels == 2 else "image"
    data = two_prototypes(256, shape, seed=0) if kind == "binary" else torch.randint(0, 2, (256, *shape)) / 2
    train(model, data, steps=30)
    total, ll = total_probability(model, shape, levels)
    assert abs(total - 1) < 1e-4
    assert ll.max() - ll.min() > 2.0  # trained: far from uniform, so the sum is not trivially 1


# -- autoregressive structure ---------------------------------------------------
def test_made_output_depends_exactly_on_earlier_inputs():
    model = made(hidden=(64, 64), num_masks=3, natural_ordering=False)
    assert all(sorted(o.tolist()) == list(range(10)) for o in model.order)
    assert len({tuple(o.tolist()) for o in model.order}) == 3  # each mask has its own ordering
    x = torch.rand(1, 10, generator=torch.Generator().manual_seed(0))
    for m in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: model.logits(v, m)[0], x)[:, 0, :]  # (D_out, D_in)
        order = model.order[m]
        earlier = order[None, :] < order[:, None]  # [i, j]: x_j comes before x_i
        assert (jac[~earlier] == 0).all()
        assert (jac[earlier] != 0).float().mean() > 0.9  # a few paths may be cut by inactive ReLUs
        path = torch.eye(10)
        for layer in model.layers:
            path = layer.mask[m].float() @ path  # (out, D): some path from input j
        assert torch.equal(path > 0, earlier)


def test_made_mask_construction_is_strict_at_the_output():
    degrees = [torch.tensor([2, 0, 1]), torch.tensor([0, 1, 1, 0])]
    hidden, out = made_masks(degrees)
    assert torch.equal(hidden, torch.tensor([[0, 1, 0], [0, 1, 1], [0, 1, 1], [0, 1, 0]], dtype=torch.bool))
    assert torch.equal(out, torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 1]], dtype=torch.bool))


def pixel_dependencies(model: PixelCNN, shape, i: int, j: int) -> torch.Tensor:
    """Boolean (H, W): which input pixels the logits of pixel (i, j) have a non-zero gradient for."""
    x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(i * 31 + j)).requires_grad_(True)
    model(x)[0, :, i, j].sum().backward()
    return x.grad[0, 0] != 0


def test_pixelcnn_never_looks_at_the_current_or_later_pixels():
    shape = (1, 6, 6)
    for kind in ("binary", "image"):
        torch.manual_seed(0)
        model = PixelCNN(PixelCNN.Config(data_shape=shape, data_kind=kind, levels=4, channels=8))  # 7x7 then 3x3
        for i, j in itertools.product(range(6), range(6)):
            deps = pixel_dependencies(model, shape, i, j).flatten()
            assert not deps[i * 6 + j:].any(), f"pixel ({i}, {j}) sees itself or a later pixel"
            assert deps[: i * 6 + j].any() or (i, j) == (0, 0)


def test_pixelcnn_receptive_field_has_no_blind_spot():
    # 3 layers of 3x3: the vertical stack reaches 3 rows up, 3 columns either side; the horizontal
    # stack 3 pixels left. The exact expected field, including up-and-right pixels that the
    # original (single-stack) PixelCNN misses.
    model = pixelcnn(shape=(1, 7, 7), layers=3)
    deps = pixel_dependencies(model, (1, 7, 7), 4, 3)
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[1:4, :] = True  # rows i-3..i-1, columns j-3..j+3
    expected[4, 0:3] = True  # row i, columns j-3..j-1
    assert torch.equal(deps, expected)
    assert deps[3, 3] and deps[4, 2] and deps[3, 4] and deps[1, 6]  # above, left, up-right, far up-right


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("stack", ["vertical", "horizontal"])
def test_masked_conv_window_equals_the_full_masked_kernel(kernel, mask_type, stack):
    # MaskedConv2d convolves with the nonzero taps' window only; output and gradients must be those
    # of the full (k, k) kernel times its mask with same-size padding.
    from models.masked import MaskedConv2d, horizontal_mask, vertical_mask
    torch.manual_seed(kernel)
    mask = (vertical_mask if stack == "vertical" else horizontal_mask)(kernel, mask_type)
    conv = MaskedConv2d(3, 5, mask)
    x = torch.randn(2, 3, 8, 9, requires_grad=True)
    full = torch.nn.functional.conv2d(x, conv.weight * conv.mask, conv.bias, padding=conv.padding)
    out = conv(x)
    assert out.shape == full.shape == (2, 5, 8, 9)
    torch.testing.assert_close(out, full)
    for a, b in zip(torch.autograd.grad(out.square().sum(), [x, conv.weight]),
                    torch.autograd.grad(full.square().sum(), [x, conv.weight])):
        torch.testing.assert_close(a, b)
    assert conv.weight.shape == (5, 3, *mask.shape)  # checkpoints keep their shape


# -- samplers -------------------------------------------------------------------
def empirical_total_variation(model, shape, levels, n=20000) -> float:
    configs = all_configurations(shape, levels)
    exact = model.log_likelihood(configs).exp()  # (levels^D,)
    samples = model.sample(n, torch.Generator().manual_seed(0))
    k = torch.round(samples.flatten(1) * (levels - 1)).long()  # (n, D)
    index = (k * levels ** torch.arange(k.shape[1] - 1, -1, -1)).sum(-1)  # row of each sample in `configs`
    freq = torch.bincount(index, minlength=len(configs)).float() / n
    return 0.5 * (freq - exact).abs().sum().item()


def test_samplers_draw_from_the_modelled_distribution():
    mixture = made(shape=(4,), hidden=(16,), num_masks=3, natural_ordering=False)
    pixels = pixelcnn(shape=(1, 2, 2), kind="image", levels=3)
    with torch.no_grad():
        for model in (mixture, pixels):  # sharpen the random distributions so errors would show
            for p in model.parameters():
                p.mul_(3.0)
    assert empirical_total_variation(mixture, (4,), 2) < 0.03
    assert empirical_total_variation(pixels, (1, 2, 2), 3) < 0.05


@pytest.mark.parametrize("build, levels", [(lambda: made(shape=(1, 4, 4), num_masks=2, hidden=(32,)), 2),
                                           (lambda: pixelcnn(shape=(1, 4, 4)), 2),
                                           (lambda: pixelcnn(shape=(1, 4, 4), kind="image", levels=5), 5)],
                         ids=["made", "pixelcnn-binary", "pixelcnn-levels5"])
def test_sampling_is_reproducible_and_valid(build, levels):
    model = build()
    a = model.sample(8, torch.Generator().manual_seed(3))
    b = model.sample(8, torch.Generator().manual_seed(3))
    c = model.sample(8, torch.Generator().manual_seed(4))
    assert a.shape == (8, 1, 4, 4) and torch.equal(a, b) and not torch.equal(a, c)
    k = a * (levels - 1)
    assert torch.equal(k, torch.round(k)) and k.min() >= 0 and k.max() <= levels - 1
    assert model.sample(2).shape == (2, 1, 4, 4)  # generator=None works


# -- training -------------------------------------------------------------------
@pytest.mark.parametrize("build, shape", [(lambda: made(hidden=(64,), num_masks=2, natural_ordering=False, lr=3e-3),
                                           (10,)),
                                          (lambda: pixelcnn(lr=3e-3), (1, 2, 5))],
                         ids=["made", "pixelcnn"])
def test_brief_training_beats_independent_bernoulli(build, shape):
    model = build()
    train_x, test_x = two_prototypes(1024, shape, seed=0), two_prototypes(1024, shape, seed=1)
    baseline = independent_bernoulli_ll(train_x, test_x)  # ~ -6.9 nats
    train(model, train_x, steps=200)
    ll = model.log_likelihood(test_x).mean().item()  # truth ~ -2.7 nats
    assert ll > baseline + 2.5, (ll, baseline)


# -- masks, persistence, configuration ----------------------------------------------
def test_made_cycles_masks_and_saves_them_exactly():
    model = made(shape=(1, 2, 5), hidden=(32,), num_masks=3, natural_ordering=False)
    opts = model.configure_optimizers()
    x = two_prototypes(16, (1, 2, 5), seed=0)
    assert [model.training_step(x, opts)["mask"] for _ in range(4)] == [0.0, 1.0, 2.0, 0.0]
    ll = model.log_likelihood(x)
    per_mask = torch.stack([model.log_prob_mask(x.flatten(1), m) for m in range(3)]).detach()  # (M, n)
    assert torch.allclose(ll, torch.logsumexp(per_mask, 0) - math.log(3), atol=1e-5)
    state = model.state()
    other = MADE(MADE.Config.from_dict({**state["config"], "seed": 7}))  # other masks before loading
    assert not torch.equal(other.order, model.order)
    other.load_state_dict(state["state_dict"])
    assert torch.equal(other.order, model.order) and int(other.mask_step) == 4
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(other.sample(16, g()), model.sample(16, g()))
    assert torch.equal(other.log_likelihood(x), ll)


def test_configuration_errors():
    with pytest.raises(ConfigError, match="single-channel"):
        PixelCNN(PixelCNN.Config(data_shape=(3, 8, 8), data_kind="image"))
    with pytest.raises(ConfigError, match="image-shaped"):
        PixelCNN(PixelCNN.Config(data_shape=(10,), data_kind="binary"))
    with pytest.raises(ConfigError, match="kernel"):
        PixelCNN.Config(data_shape=(1, 8, 8), data_kind="binary", kernel=4)
    with pytest.raises(ConfigError, match="binary"):
        MADE(MADE.Config(data_shape=(1, 8, 8), data_kind="image"))
    with pytest.raises(ConfigError, match="num_masks"):
        MADE.Config(data_shape=(4,), data_kind="binary", num_masks=0)
    with pytest.raises(ConfigError, match="hidden"):
        MADE.Config.from_dict({"data_shape": [4], "data_kind": "binary", "hidden": [8, "x"]})
