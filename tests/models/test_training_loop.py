"""The training loop's recipe features, each on a case with a known answer: lr schedules,
early stopping with the best weights restored, the weight average, gradient clipping, output
biases from the data, resuming, and recipes resolved from params.yaml."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import yaml

import models
from genzoo.config import ConfigError, Params, TrainConfig, load_params, recipe_kind
from genzoo.training import WeightAverage, fit, lr_factor, validation_log_likelihood

ROOT = Path(__file__).resolve().parents[2]


def _binary(n: int = 256, d: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.linspace(0.05, 0.95, d)
    return torch.bernoulli(p.expand(n, d), generator=g)


def _made(d: int = 12, **over) -> models.GenerativeModel:
    torch.manual_seed(0)
    return models.build("made", {"data_shape": [d], "data_kind": "binary", "hidden": [16], **over})


def test_lr_factor_warmup_cosine_and_step():
    cos = TrainConfig(epochs=2, steps_per_epoch=5, schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    values = [lr_factor(cos, s, 10, 5) for s in range(10)]
    assert values[:2] == [0.5, 1.0]  # linear warm-up
    assert values[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[2:], values[3:]))  # then decreasing
    assert lr_factor(cos, 10, 10, 5) == pytest.approx(0.1)  # ends at the floor
    step = TrainConfig(epochs=4, steps_per_epoch=5, schedule="step", step_every=2, step_gamma=0.5)
    assert [lr_factor(step, s, 20, 5) for s in (0, 9, 10, 19)] == [1.0, 1.0, 0.5, 0.5]
    # after 2 epochs of 5 steps, epochs of 2: step 12 is in epoch 4 (index 3), step 14 in epoch 5
    assert [lr_factor(step, s, 20, 2, since=(2, 10)) for s in (10, 12, 14)] == [0.5, 0.5, 0.25]
    assert lr_factor(TrainConfig(), 123, 1000, 10) == 1.0


def test_fit_applies_the_schedule_to_the_optimiser():
    model = _made()
    cfg = TrainConfig(epochs=2, batch_size=32, steps_per_epoch=4, schedule="cosine", min_lr_ratio=0.25, val_examples=0)
    history = fit(model, _binary(), cfg, log=lambda m: None)
    assert history[0]["lr"] == pytest.approx(model.config.lr * lr_factor(cfg, 4, 8, 4))
    assert history[-1]["lr"] == pytest.approx(model.config.lr * 0.25)
    assert history[-1]["steps"] == 8


def test_early_stopping_restores_the_best_weights():
    """A learning rate far too high makes validation worse after the first epoch: training stops after
    `patience` worse epochs and the model ends with the weights of the best epoch."""
    train, val = _binary(512), _binary(128, seed=1)
    model = _made(lr=0.5)
    seen: list[tuple[int, dict]] = []
    cfg = TrainConfig(epochs=30, batch_size=64, steps_per_epoch=8, patience=2, val_examples=128)
    history = fit(model, train, cfg, val=val, log=lambda m: None,
                  on_epoch_end=lambda e, m, s: seen.append((e, s)))
    nll = [h["val_nll"] for h in history]
    best_epoch = nll.index(min(nll)) + 1
    assert len(history) < 30 and len(history) == best_epoch + 2  # stopped `patience` epochs after the best
    assert -validation_log_likelihood(model, val) == pytest.approx(min(nll), abs=1e-4)
    last = seen[-1][1]
    assert last["finished"] and last["stopped_early"] and last["best"]["epoch"] == best_epoch
    served = models.from_state(last)  # what the registry gets: the best weights, not the last ones
    assert -validation_log_likelihood(served, val) == pytest.approx(min(nll), abs=1e-4)


def test_resume_from_an_early_stopped_checkpoint_trains_no_more():
    train, val = _binary(512), _binary(128, seed=1)
    states = []
    cfg = TrainConfig(epochs=30, batch_size=64, steps_per_epoch=8, patience=1, val_examples=128)
    history = fit(_made(lr=0.5), train, cfg, val=val, log=lambda m: None, on_epoch_end=lambda e, m, s: states.append(s))
    again = _made(lr=0.5)
    resumed = fit(again, train, cfg, val=val, resume=states[-1], log=lambda m: None)
    assert len(resumed) == len(history)
    assert -validation_log_likelihood(again, val) == pytest.approx(min(h["val_nll"] for h in history), abs=1e-4)


def test_resume_continues_the_schedule_and_matches_an_uninterrupted_run():
    train = _binary(256)
    cfg = TrainConfig(epochs=3, batch_size=32, steps_per_epoch=4, schedule="cosine", ema=0.9, val_examples=0)
    whole = _made()
    fit(whole, train, cfg, log=lambda m: None)
    states = []
    first = _made()
    fit(first, train, TrainConfig(**{**cfg.to_dict(), "epochs": 3}), log=lambda m: None,
        on_epoch_end=lambda e, m, s: states.append(copy.deepcopy(s)))  # as saved: a snapshot
    resumed = _made()
    fit(resumed, train, cfg, resume=states[0], log=lambda m: None)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)


def test_weight_average_is_the_exponential_moving_average():
    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    avg = WeightAverage(net, decay=0.5)
    for value in (1.0, 1.0):
        with torch.no_grad():
            net.weight.fill_(value)
        avg.update(net)
    assert avg.shadow["weight"].item() == pytest.approx(0.75)  # 0 -> 0.5 -> 0.75


def test_fit_with_ema_leaves_the_averaged_weights_in_the_model():
    model = models.build("gan", {"data_shape": [2], "data_kind": "points", "hidden": 8, "latent_dim": 2})
    states = []
    cfg = TrainConfig(epochs=1, batch_size=32, steps_per_epoch=5, ema=0.8, val_examples=0)
    fit(model, torch.randn(128, 2), cfg, log=lambda m: None,
        on_epoch_end=lambda e, m, s: states.append(copy.deepcopy(s)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, states[-1]["ema"][k])
        assert torch.equal(v, states[-1]["state_dict"][k])
    assert any(not torch.equal(states[-1]["live_state_dict"][k], v) for k, v in model.state_dict().items())


def test_gradient_clipping_bounds_the_step():
    """With SGD-like Adam replaced by plain SGD, a clipped step moves the weights by at most lr * clip."""
    model = _made(lr=1.0)
    model.configure_optimizers = lambda: {"main": torch.optim.SGD(model.parameters(), lr=1.0)}
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    fit(model, _binary(64) * 0 + 1, TrainConfig(epochs=1, batch_size=64, steps_per_epoch=1, clip_grad=0.01,
                                               val_examples=0, init_from_data=False), log=lambda m: None)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm().item() == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize("family", ["made", "rbm", "vae", "pixelcnn", "gsn", "gmmn"])
def test_output_biases_start_at_the_training_mean(family):
    """With every weight zeroed after init_from_data, the model's Bernoulli output is the data mean."""
    shape = [1, 4, 4] if family == "pixelcnn" else [16]
    x = _binary(400, 16).view(400, *shape)
    model = models.build(family, {"data_shape": shape, "data_kind": "binary"})
    model.init_from_data(x)
    mean = x.flatten(1).mean(0).clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        if family == "made":
            probs = torch.sigmoid(model.layers[-1].bias)
        elif family == "rbm":
            probs = torch.sigmoid(model.b)
        elif family == "vae":
            probs = torch.sigmoid(model.decoder[-1].bias)
        elif family == "gsn":
            probs = torch.sigmoid(model.denoiser[-1].bias)
        elif family == "gmmn":
            probs = torch.sigmoid(model.generator[-2].bias)
        else:  # pixelcnn: one bias shared by every position, the mean over all pixels
            probs = torch.sigmoid(model.head[-1].bias).expand(16)
            mean = x.mean().expand(16)
    assert torch.allclose(probs, mean, atol=1e-5)


def test_made_from_the_data_mean_beats_a_zero_start():
    """The point of the bias start: after a few steps the MADE is closer to the data (known direction)."""
    train, val = _binary(512), _binary(256, seed=1)
    cfg = dict(epochs=1, batch_size=64, steps_per_epoch=5, val_examples=0)
    a, b = _made(), _made()
    fit(a, train, TrainConfig(**cfg, init_from_data=True), log=lambda m: None)
    fit(b, train, TrainConfig(**cfg, init_from_data=False), log=lambda m: None)
    assert validation_log_likelihood(a, val) > validation_log_likelihood(b, val) + 0.5


def test_recipe_kinds():
    assert recipe_kind([2], "points") == "points"
    assert recipe_kind([1, 28, 28], "binary") == "binary"
    assert recipe_kind([1, 8, 8], "image") == "small_image"
    assert recipe_kind([1, 28, 28], "image") == "grey_image"
    assert recipe_kind([3, 28, 28], "image") == "color_image"


def test_recipes_resolve_in_order_and_every_recipe_builds():
    params = load_params(ROOT / "params.yaml")
    data_of = {"points": ([2], "points"), "binary": ([1, 28, 28], "binary"), "small_image": ([1, 8, 8], "image"),
               "grey_image": ([1, 28, 28], "image"), "color_image": ([3, 28, 28], "image")}
    for family, kinds in params.recipes.items():
        for kind in kinds:
            for preset in params.train:
                recipe = params.resolve(family, kind, preset)
                shape, data_kind = data_of[kind]
                assert recipe_kind(shape, data_kind) == kind
                models.get_family(family).Config.from_dict({"data_shape": shape, "data_kind": data_kind, **recipe.model})
    p = Params(datasets=[], prepare={}, evaluators={}, train={"quick": TrainConfig(epochs=3)},
               models={"gan": {"lr": 1.0, "hidden": 8}}, evaluate=params.evaluate,
               recipes={"gan": {"points": {"model": {"lr": 2.0}, "train": {"epochs": 5},
                                           "quick": {"model": {"hidden": 9}, "train": {"batch_size": 7}}}}})
    r = p.resolve("gan", "points", "quick", {"batch_size": 8}, {"hidden": 10})
    assert r.model == {"lr": 2.0, "hidden": 10} and r.train.epochs == 5 and r.train.batch_size == 8
    assert r.name == "gan/points/quick"
    r = p.resolve("gan", "points", "quick")
    assert r.model == {"lr": 2.0, "hidden": 9} and r.train.batch_size == 7
    assert p.resolve("gan", "binary", "quick").name == "gan/default/quick"


def test_bad_recipes_are_refused_with_the_key(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for bad, word in (({"gan": {"points": {"model": {"nope": 1}}}}, "nope"),
                      ({"gan": {"pictures": {}}}, "pictures"),
                      ({"gan": {"points": {"quick": {"train": {"epochz": 1}}}}}, "epochz"),
                      ({"gan": {"points": {"model": {}, "later": {}}}}, "later"),
                      ({"nofamily": {}}, "nofamily")):
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump({**raw, "recipes": bad}))
        with pytest.raises(ConfigError, match=word):
            load_params(path)


def test_train_config_rejects_bad_recipe_values():
    for bad in ({"schedule": "linear"}, {"ema": 1.0}, {"patience": -1}, {"clip_grad": -1.0},
                {"min_lr_ratio": 2.0}, {"step_every": 0}, {"precision": "fp16"}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    assert math.isclose(TrainConfig(ema=0.999).ema, 0.999)


@pytest.mark.parametrize("levels", [2, 5, 256])
def test_discretized_logistic_sums_to_one_over_the_levels(levels):
    from models.vae import discretized_logistic_log_prob

    grid = torch.arange(levels).double() / (levels - 1)  # every value a pixel can take
    for mean, log_scale in ((0.3, -1.0), (0.0, -6.0), (1.0, -7.0), (0.5, 2.0), (0.51, -7.0)):
        lp = discretized_logistic_log_prob(grid, torch.full_like(grid, mean), torch.full_like(grid, log_scale), levels)
        assert torch.isfinite(lp).all()
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-4), (mean, log_scale)


def test_weight_average_averages_batchnorm_statistics_and_copies_other_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    net.register_buffer("count", torch.zeros((), dtype=torch.float64))
    avg = WeightAverage(net, decay=0.5)
    with torch.no_grad():
        net[1].running_mean.fill_(1.0)
        net.count.fill_(7.0)
    avg.update(net)
    assert torch.allclose(avg.shadow["1.running_mean"], torch.full((2,), 0.5))  # averaged: 0 -> 0.5
    assert avg.shadow["count"].item() == 7.0  # a running data moment is copied, not averaged
    assert avg.shadow["1.num_batches_tracked"].item() == net[1].num_batches_tracked.item()


def _recipes() -> list[tuple[str, str]]:
    params = load_params(ROOT / "params.yaml")
    return [(family, kind) for family, kinds in params.recipes.items() for kind in kinds]


@pytest.mark.parametrize("family,kind", _recipes())
def test_every_recipe_trains_on_tiny_data(family, kind):
    """Each recipe, at the smoke budget, builds and trains a few steps on tiny data of its kind."""
    shape, data_kind = {"points": ([2], "points"), "binary": ([1, 8, 8], "binary"),
                        "small_image": ([1, 8, 8], "image"), "grey_image": ([1, 20, 20], "image"),
                        "color_image": ([3, 20, 20], "image")}[kind]
    assert recipe_kind(shape, data_kind) == kind
    recipe = load_params(ROOT / "params.yaml").resolve(family, kind, "smoke",
                                                       {"steps_per_epoch": 2, "epochs": 1, "batch_size": 16})
    levels = 17 if data_kind == "image" else 2
    config = {**recipe.model, "data_shape": shape, "data_kind": data_kind}
    if data_kind == "image":
        config["levels"] = levels
    g = torch.Generator().manual_seed(0)
    if data_kind == "points":
        x = torch.randn(64, *shape, generator=g)
    elif data_kind == "binary":
        x = torch.bernoulli(torch.full((64, *shape), 0.3), generator=g)
    else:
        x = torch.randint(0, levels, (64, *shape), generator=g).float() / (levels - 1)
    torch.manual_seed(0)
    model = models.build(family, config)
    history = fit(model, x, recipe.train, log=lambda m: None)
    assert len(history) == 1 and all(math.isfinite(v) for v in history[0].values())
    assert model.sample(4, torch.Generator().manual_seed(1)).shape == (4, *shape)


def test_fit_flushes_denormals_in_its_thread_and_the_threads_it_starts():
    """genzoo.training.flush_denormals (called by fit): float32 values below 1.2e-38 become 0 in this
    thread and in threads started after it, torch's pools included. In a new process, so the test
    session's own floating-point mode is not what is checked."""
    import subprocess
    import sys

    probe = (
        "import threading, torch, models\n"
        "from genzoo.config import TrainConfig\n"
        "from genzoo.training import fit\n"
        "tiny = lambda: (torch.tensor([1e-38]) * 0.5).item()\n"
        "before = tiny()\n"
        "m = models.build('made', {'data_shape': [4], 'data_kind': 'binary', 'hidden': [8]})\n"
        "fit(m, torch.bernoulli(torch.full((32, 4), 0.5)), TrainConfig(epochs=1, batch_size=8, steps_per_epoch=2),"
        " log=lambda s: None)\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(tiny())); t.start(); t.join()\n"
        "print(before, tiny(), seen[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    before, after, in_new_thread = map(float, out.stdout.split())
    assert before == pytest.approx(5e-39)  # a denormal, as IEEE 754 has it by default
    assert after == 0.0 and in_new_thread == 0.0


def test_bf16_precision_autocasts_the_forward_pass_and_keeps_float32_weights():
    """train.precision 'bf16': the training step's convolutions compute in bfloat16 where the CPU has it
    natively (and the log says float32 where it has not); weights, gradients and the likelihood the
    model reports stay float32, and training still learns."""
    from genzoo.training import native_bfloat16

    torch.manual_seed(0)
    model = models.build("pixelcnn", {"data_shape": [1, 6, 6], "data_kind": "binary", "channels": 8, "layers": 2,
                                      "lr": 0.01})
    seen: list[torch.dtype] = []
    model.stack[1].vertical.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    data = torch.bernoulli(torch.full((256, 1, 6, 6), 0.2), generator=torch.Generator().manual_seed(0))
    before = -model.log_likelihood(data).mean().item()
    seen.clear()  # the evaluation above ran in float32; from here, the training steps only
    lines: list[str] = []
    fit(model, data, TrainConfig(epochs=3, batch_size=32, steps_per_epoch=8, val_examples=0, precision="bf16"),
        log=lines.append)
    native = native_bfloat16(torch.device("cpu"))
    assert set(seen) == {torch.bfloat16 if native else torch.float32}
    assert native or any("no native bfloat16" in line for line in lines)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    after = model.log_likelihood(data)
    assert after.dtype == torch.float32
    assert -after.mean().item() < before - 1.0  # it learnt: the NLL fell by more than a nat per image


def test_a_time_budget_fits_the_steps_per_epoch_and_the_schedule_to_it():
    """train.budget_seconds: after the first steps' timing, steps_per_epoch shrinks to what fits the budget (never
    below the steps already run), the cosine schedule still ends at its floor, and a resumed run keeps the steps."""
    from genzoo.training import BUDGET_TIMED_STEPS, BUDGET_WARMUP_STEPS, steps_within_budget

    timed = BUDGET_WARMUP_STEPS + BUDGET_TIMED_STEPS
    tight = TrainConfig(epochs=3, steps_per_epoch=40, budget_seconds=2.0)
    assert steps_within_budget(tight, 40, 0.05) == 13  # 2 s / (3 epochs x 50 ms)
    assert steps_within_budget(tight, 40, 10.0) == timed  # the timed steps have run already
    assert steps_within_budget(tight, 40, 1e-6) == 40  # a budget never adds steps

    train = _binary(512)
    cfg = TrainConfig(epochs=3, batch_size=32, steps_per_epoch=40, schedule="cosine", min_lr_ratio=0.1,
                      val_examples=0, budget_seconds=1e-6)  # no step fits: the epochs keep the timed steps only
    lines, states = [], []
    history = fit(_made(lr=0.01), train, cfg, log=lines.append,
                  on_epoch_end=lambda e, m, s: states.append(copy.deepcopy(s)))
    assert [h["steps"] for h in history] == [timed, 2 * timed, 3 * timed]
    assert history[-1]["lr"] == pytest.approx(0.1 * 0.01)  # the schedule ran over the fitted steps
    assert any(f"holds {timed} steps per epoch (of 40)" in line for line in lines)
    resumed = fit(_made(lr=0.01), train, cfg, resume=states[0], log=lambda m: None)
    assert [h["steps"] for h in resumed] == [timed, 2 * timed, 3 * timed]

    roomy = fit(_made(lr=0.01), train, TrainConfig(**{**cfg.to_dict(), "budget_seconds": 1e6}), log=lambda m: None)
    assert [h["steps"] for h in roomy] == [40, 80, 120]
    assert all(h["bfloat16"] == 0.0 for h in roomy)  # fp32 asked: it says so


def _slowing_clock(monkeypatch):
    """genzoo.training's clock, advanced by the steps of a model wrapped in the returned function: 10 ms for the
    budget's warm-up and timed steps, 20 ms for every later one."""
    import types

    import genzoo.training as training
    from genzoo.training import BUDGET_TIMED_STEPS, BUDGET_WARMUP_STEPS

    clock = {"now": 0.0, "steps": 0}
    monkeypatch.setattr(training, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))

    def slowing(model):
        step = model.training_step

        def timed_step(batch, optimizers):
            clock["steps"] += 1
            clock["now"] += 0.01 if clock["steps"] <= BUDGET_WARMUP_STEPS + BUDGET_TIMED_STEPS else 0.02
            return step(batch, optimizers)
        model.training_step = timed_step
        return model
    return clock, slowing


def test_a_time_budget_is_fitted_again_after_every_epoch(monkeypatch):
    """Steps that slow down after the first epoch's timing (here from 10 to 20 ms, on a clock the steps advance)
    do not overrun the budget: each later epoch gets the steps that what is left of it holds at the last epoch's
    pace, the schedule ends with the training, and a resumed run keeps the fitted steps."""
    from genzoo.training import BUDGET_TIMED_STEPS, BUDGET_WARMUP_STEPS, steps_for_the_rest

    cfg = TrainConfig(epochs=3, batch_size=32, steps_per_epoch=100, schedule="cosine", min_lr_ratio=0.1,
                      val_examples=0, budget_seconds=3.0)
    assert steps_for_the_rest(cfg, 100, 1.5, 1, 0.01, 0.25) == 50  # (3 - 1.5) / 2 epochs - 0.25 s of validation
    assert steps_for_the_rest(cfg, 100, 0.1, 1, 0.001, 0.0) == 100  # never more than configured
    assert steps_for_the_rest(cfg, 100, 9.0, 2, 0.01, 0.0) == BUDGET_WARMUP_STEPS + BUDGET_TIMED_STEPS  # overrun

    clock, slowing = _slowing_clock(monkeypatch)
    lines, states = [], []
    history = fit(slowing(_made(lr=0.01)), _binary(512), cfg, log=lines.append,
                  on_epoch_end=lambda e, m, s: states.append(copy.deepcopy(s)))
    totals = [int(h["steps"]) for h in history]
    per_epoch = [b - a for a, b in zip([0] + totals, totals)]
    assert per_epoch[0] == 100  # the first 12 steps at 10 ms: 100 steps per epoch fit 3 s
    assert per_epoch[1] < 40 and per_epoch[2] < 40  # 1.88 s spent in epoch 1: what is left holds fewer
    assert clock["now"] <= cfg.budget_seconds + 1e-9  # without the refit: 1.88 + 2 x 2.0 s
    assert any("steps per epoch for the 2 epochs left (was 100)" in line for line in lines)
    assert history[-1]["lr"] == pytest.approx(0.1 * 0.01)  # the cosine ended with the shortened run
    assert states[0]["steps_per_epoch"] == per_epoch[1]
    resumed = fit(_made(lr=0.01), _binary(512), TrainConfig(**{**cfg.to_dict(), "budget_seconds": 0.0}),
                  resume=states[0], log=lambda m: None)
    assert [h["steps"] for h in resumed] == [h["steps"] for h in history[:1]] + [
        history[0]["steps"] + per_epoch[1], history[0]["steps"] + 2 * per_epoch[1]]


def test_the_step_schedule_decays_once_an_epoch_when_a_time_budget_shortens_the_epochs(monkeypatch):
    """The refit gives epochs 2 and 3 about a third of epoch 1's steps; the step schedule still halves the rate at
    each epoch's end (counting steps of the new length from epoch 1 would put the third decay in epoch 2)."""
    _, slowing = _slowing_clock(monkeypatch)
    cfg = TrainConfig(epochs=3, batch_size=32, steps_per_epoch=100, schedule="step", step_every=1, step_gamma=0.5,
                      val_examples=0, budget_seconds=3.0)
    history = fit(slowing(_made(lr=0.01)), _binary(512), cfg, log=lambda m: None)
    assert history[1]["steps"] - history[0]["steps"] < 40  # the refit shortened the epochs left
    assert [h["lr"] / 0.01 for h in history] == pytest.approx([0.5, 0.25, 0.125])


def test_a_negative_time_budget_is_rejected():
    with pytest.raises(ConfigError, match="budget_seconds"):
        TrainConfig(budget_seconds=-1)
