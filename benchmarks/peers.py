"""genzoo against the libraries a user would reach for instead: same architecture, data and batch.

    bash benchmarks/peers.sh        (builds benchmarks/.venv-peers if missing, then runs, at the defaults:)
    GENZOO_DATA_DIR=../shared/data benchmarks/.venv-peers/bin/python benchmarks/peers.py --threads 2

Other flags: --pairs made-pytorch-made,vae-pythae (default: all), --steps N (race budget of every
pair; default: each genzoo recipe's `quick` budget), --tp-seconds S (throughput time per side).
The peers live in their own venv (benchmarks/peers-requirements.txt), never in genzoo's; genzoo's
models/, data/ and genzoo/training.py are imported from this checkout.

Per pair it measures
  (a) train-step throughput: genzoo's `training_step` (with `configure_optimizers()`) against the
      peer's step (the one its trainer or its documented loop runs) on the same pre-drawn batches,
      in alternating blocks (ABBA order) in one process at the same thread count, so background
      load hits both sides alike;
  (b) a race to the peer's final validation NLL: each side trains with its own loop, genzoo with
      `genzoo.training.fit` and its params.yaml recipe (cosine schedule, output biases from the
      data), the peer with its trainer (pythae's BaseTrainer) or its plain documented loop, for the
      same number of steps at the same batch size and initial learning rate (genzoo's: a peer at
      its own default, e.g. pythae's 1e-4, would be a straw man). The two runs take turns (one
      thread each, a baton handed over 4 times per evaluation point), so load hits both alike; the
      validation NLL (20 points per run) is computed with the clock stopped, by the same estimator
      on the same rows. Reported: both final NLLs, genzoo's training time to first reach the peer's
      final NLL and the peer's own time to reach it (at evaluation-point resolution), and the same
      for the peer's best NLL (a noisy peer can end above its best).
GANs have no NLL: throughput only. Writes benchmarks/results/peers.json and peers.md, prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # genzoo's models/, data/, genzoo/ from this checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import data  # noqa: E402
import models  # noqa: E402
from genzoo.config import Params, load_params, recipe_kind  # noqa: E402
from genzoo.training import fit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DROPPED = {
    "torchgan": "torchgan 0.1.0 imports torchvision at `import torchgan`; the only torchvision the reachable "
                "registries offer for torch 2.13.0 (0.28.0 from PyPI) is the CUDA build, whose _C.so needs "
                "libc10_cuda.so and fails against the CPU torch (the CPU wheel index is not reachable); the "
                "GAN peer is a plain DCGAN-tutorial-style script instead",
    "nflows-realnvp": "nflows' SimpleRealNVP has residual-net conditioners and sigmoid scales, not genzoo's "
                      "MLP/tanh couplings (not the same architecture); zuko's RealNVP is the flow peer",
}


# ---------------------------------------------------------------------------------------------
# The peers: each a step (for throughput) and a training run (for the race)
# ---------------------------------------------------------------------------------------------
class Stop(Exception):
    """Raised from a peer trainer's callback when the step budget is spent."""


class Peer:
    """A peer model with `step(batch)`, `train(x, steps, every, checkpoint)` and `nll(x)` (mean, nats)."""

    name: str
    desc: str
    lr: float
    batch_size: int

    def step(self, batch: torch.Tensor) -> None:
        raise NotImplementedError

    def nll(self, x: torch.Tensor) -> float:
        raise NotImplementedError

    def plain_loop(self, x: torch.Tensor, steps: int, every: int, checkpoint: Callable[[int], None]) -> None:
        """The documented plain loop: a fresh permutation per pass, consecutive batches of it;
        `checkpoint(step)` every `every` steps (the race's hand-over points)."""
        n, b = len(x), self.batch_size
        perm, pos = torch.randperm(n), 0
        for step in range(steps):
            if pos + b > n:
                perm, pos = torch.randperm(n), 0
            self.step(x[perm[pos:pos + b]])
            pos += b
            if (step + 1) % every == 0:
                checkpoint(step + 1)

    def train(self, x: torch.Tensor, steps: int, every: int, checkpoint: Callable[[int], None]) -> None:
        self.plain_loop(x, steps, every, checkpoint)


class KarpathyMADE(nn.Module):
    """The design of Karpathy's pytorch-made (made.py): float mask buffers set by set_mask, natural
    ordering, hidden degrees rng.randint(min of the previous layer, nin - 1), `mask * weight`."""

    class MaskedLinear(nn.Linear):
        def __init__(self, in_features: int, out_features: int):
            super().__init__(in_features, out_features)
            self.register_buffer("mask", torch.ones(out_features, in_features))

        def set_mask(self, mask: np.ndarray) -> None:
            self.mask.data.copy_(torch.from_numpy(mask.astype(np.uint8).T))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, self.mask * self.weight, self.bias)

    def __init__(self, nin: int, hidden: list[int], seed: int = 0):
        super().__init__()
        sizes = [nin, *hidden, nin]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [self.MaskedLinear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers[:-1])
        rng = np.random.RandomState(seed)
        m = {-1: np.arange(nin)}
        for layer, size in enumerate(hidden):
            m[layer] = rng.randint(m[layer - 1].min(), nin - 1, size=size)
        masks = [m[layer - 1][:, None] <= m[layer][None, :] for layer in range(len(hidden))]
        masks.append(m[len(hidden) - 1][:, None] < m[-1][None, :])
        for layer, mask in zip([mod for mod in self.net if isinstance(mod, self.MaskedLinear)], masks):
            layer.set_mask(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BernoulliMADEPeer(Peer):
    """A MADE network (logits) + the Bernoulli loss sum_d BCE(x_d) / B, Adam, constant learning rate."""

    def __init__(self, name: str, desc: str, net: nn.Module, lr: float, batch_size: int):
        self.name, self.desc, self.net, self.lr, self.batch_size = name, desc, net, lr, batch_size
        self.opt = torch.optim.Adam(net.parameters(), lr=lr)

    def step(self, batch: torch.Tensor) -> None:
        xb = batch.flatten(1)
        loss = F.binary_cross_entropy_with_logits(self.net(xb), xb, reduction="sum") / xb.shape[0]
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        loss.item()  # the script logs every step's loss

    @torch.no_grad()
    def nll(self, x: torch.Tensor) -> float:
        self.net.eval()
        out = [F.binary_cross_entropy_with_logits(self.net(x[i:i + 1000].flatten(1)), x[i:i + 1000].flatten(1),
                                                  reduction="none").sum(-1) for i in range(0, len(x), 1000)]
        self.net.train()
        return torch.cat(out).double().mean().item()


def made_karpathy(dim: int, hidden: list[int], lr: float, batch: int) -> Peer:
    return BernoulliMADEPeer("pytorch-made", "Karpathy's pytorch-made design (plain torch script), "
                             "784-500-784, 1 mask, natural order", KarpathyMADE(dim, hidden), lr, batch)


def made_nflows(dim: int, hidden: list[int], lr: float, batch: int) -> Peer:
    from nflows.transforms.made import MADE

    torch.manual_seed(0)  # nflows draws the random degrees from the global generator
    net = MADE(dim, hidden[0], num_blocks=len(hidden) - 1, use_residual_blocks=False, random_mask=True)
    return BernoulliMADEPeer("nflows", "nflows 0.14 MADE network (random_mask, no residual blocks) + "
                             "Bernoulli loss, plain loop", net, lr, batch)


class PythaeVAEPeer(Peer):
    """pythae's VAE with MLP encoder/decoder of genzoo's sizes, Bernoulli ('bce') reconstruction;
    the race trains it with pythae's BaseTrainer (its DataLoader, callbacks and progress bar)."""

    name = "pythae"

    def __init__(self, shape: tuple[int, ...], hidden: int, latent: int, lr: float, batch_size: int):
        from pythae.models import VAE, VAEConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder

        dim = math.prod(shape)

        class Encoder(BaseEncoder):
            def __init__(self):
                super().__init__()
                self.net = models.nets.mlp([dim, hidden, hidden, 2 * latent])

            def forward(self, x):
                mu, log_var = self.net(x.flatten(1)).chunk(2, dim=-1)
                return ModelOutput(embedding=mu, log_covariance=log_var)

        class Decoder(BaseDecoder):
            def __init__(self):
                super().__init__()
                self.net = models.nets.mlp([latent, hidden, hidden, dim])

            def forward(self, z):
                return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).view(-1, *shape))

        self.desc = (f"pythae 0.1.2 VAE, MLP {dim}-{hidden}-{hidden}-2x{latent} / {latent}-{hidden}-{hidden}-{dim}, "
                     "'bce' reconstruction; race: pythae BaseTrainer")
        self.lr, self.batch_size, self.shape = lr, batch_size, shape
        cfg = VAEConfig(input_dim=tuple(shape), latent_dim=latent, reconstruction_loss="bce")
        self.model = VAE(cfg, encoder=Encoder(), decoder=Decoder())
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)  # for the bare step (throughput)

    def step(self, batch: torch.Tensor) -> None:  # BaseTrainer.train_step's body
        from pythae.data.datasets import DatasetOutput

        out = self.model(DatasetOutput(data=batch), epoch=1, dataset_size=self.batch_size, uses_ddp=False)
        self.opt.zero_grad()
        out.loss.backward()
        self.opt.step()
        out.loss.item()

    def train(self, x: torch.Tensor, steps: int, every: int, checkpoint: Callable[[int], None]) -> None:
        import logging

        from pythae.data.datasets import BaseDataset
        from pythae.trainers import BaseTrainer, BaseTrainerConfig
        from pythae.trainers.training_callbacks import TrainingCallback

        for logger_name in list(logging.root.manager.loggerDict):  # its INFO banners; the progress bar stays
            if logger_name.startswith("pythae"):
                logging.getLogger(logger_name).setLevel(logging.WARNING)

        class Budget(TrainingCallback):
            taken = 0

            def on_train_step_end(self, training_config, **kwargs):
                self.taken += 1
                if self.taken % every == 0:
                    checkpoint(self.taken)
                if self.taken >= steps:
                    raise Stop

        per_epoch = math.ceil(len(x) / self.batch_size)
        with tempfile.TemporaryDirectory(prefix="peers-pythae-") as out:
            cfg = BaseTrainerConfig(output_dir=out, per_device_train_batch_size=self.batch_size, learning_rate=self.lr,
                                    num_epochs=math.ceil(steps / per_epoch) + 1, keep_best_on_train=True, no_cuda=True)
            trainer = BaseTrainer(self.model, BaseDataset(x, torch.zeros(len(x))), training_config=cfg,
                                  callbacks=[Budget()])
            try:
                trainer.train()
            except Stop:
                pass

    @torch.no_grad()
    def elbo(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The single-sample ELBO from pythae's encoder/decoder and its own BCE reconstruction term."""
        enc = self.model.encoder(x)
        mu, log_var = enc.embedding, enc.log_covariance
        z = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape, generator=generator)
        recon = self.model.decoder(z)["reconstruction"]
        rec = -F.binary_cross_entropy(recon.reshape(len(x), -1), x.reshape(len(x), -1), reduction="none").sum(-1)
        return rec - 0.5 * (mu**2 + log_var.exp() - 1 - log_var).sum(-1)

    def nll(self, x: torch.Tensor) -> float:
        self.model.eval()
        g = torch.Generator().manual_seed(1234)
        out = -torch.cat([self.elbo(x[i:i + 1000], g) for i in range(0, len(x), 1000)]).double().mean().item()
        self.model.train()
        return out


class ZukoRealNVPPeer(Peer):
    """zuko 1.6 RealNVP: `transforms` affine couplings with alternating masks, MLP conditioners, the
    README's loop (loss = -flow().log_prob(x).mean(), Adam)."""

    name = "zuko"

    def __init__(self, dim: int, hidden: int, couplings: int, lr: float, batch_size: int):
        import zuko

        torch.manual_seed(0)
        self.flow = zuko.flows.RealNVP(dim, transforms=couplings, hidden_features=(hidden, hidden))
        self.desc = f"zuko 1.6.0 RealNVP, {couplings} couplings, MLP {hidden}x{hidden} conditioners, README loop"
        self.lr, self.batch_size = lr, batch_size
        self.opt = torch.optim.Adam(self.flow.parameters(), lr=lr)

    def step(self, batch: torch.Tensor) -> None:
        loss = -self.flow().log_prob(batch).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    @torch.no_grad()
    def nll(self, x: torch.Tensor) -> float:
        return -self.flow().log_prob(x).double().mean().item()


class DCGANPeer(Peer):
    """A plain DCGAN script (PyTorch's DCGAN tutorial step) with genzoo's conv players' layers:
    G: linear-BN-ReLU to (2w, H/4, W/4), convT-BN-ReLU, convT-sigmoid; D: conv-LReLU x2, linear."""

    name = "dcgan-script"

    def __init__(self, shape: tuple[int, int, int], latent: int, width: int, lr: float, beta1: float, batch_size: int):
        c, h, w = shape
        self.start = (2 * width, h // 4, w // 4)
        self.G = nn.Sequential(
            nn.Linear(latent, math.prod(self.start)), nn.BatchNorm1d(math.prod(self.start)), nn.ReLU(),
            nn.Unflatten(1, self.start),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, c, 4, 2, 1), nn.Sigmoid())
        self.D = nn.Sequential(
            nn.Conv2d(c, width, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * width * (h // 4) * (w // 4), 1))
        self.latent, self.lr, self.batch_size = latent, lr, batch_size
        self.desc = f"plain DCGAN script (PyTorch tutorial step, BCE-with-logits), conv width {width}, latent {latent}"
        self.optD = torch.optim.Adam(self.D.parameters(), lr=lr, betas=(beta1, 0.999))
        self.optG = torch.optim.Adam(self.G.parameters(), lr=lr, betas=(beta1, 0.999))
        self.crit = nn.BCEWithLogitsLoss()

    def step(self, real: torch.Tensor) -> None:
        b = real.shape[0]
        self.D.zero_grad()
        out = self.D(real).view(-1)
        err_real = self.crit(out, torch.ones(b))
        err_real.backward()
        d_x = torch.sigmoid(out).mean().item()
        fake = self.G(torch.randn(b, self.latent))
        out = self.D(fake.detach()).view(-1)
        err_fake = self.crit(out, torch.zeros(b))
        err_fake.backward()
        self.optD.step()
        self.G.zero_grad()
        out = self.D(fake).view(-1)
        err_g = self.crit(out, torch.ones(b))
        err_g.backward()
        self.optG.step()
        _ = (err_real + err_fake).item(), err_g.item(), d_x  # the tutorial's per-step stats


# ---------------------------------------------------------------------------------------------
# The pairs
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Setup:
    family: str
    dataset: str
    model_cfg: dict[str, Any]  # genzoo family config (with data_shape, data_kind)
    train_cfg: Any  # genzoo TrainConfig (the recipe)
    make_peer: Callable[[], Peer]
    nll: bool = True
    note: str = ""


def genzoo_recipe(params: Params, family: str, prepared: data.Prepared, model_overrides: dict | None = None):
    recipe = params.resolve(family, recipe_kind(prepared.shape, prepared.kind), "quick",
                            model_overrides=model_overrides)
    cfg = {**recipe.model, "data_shape": list(prepared.shape), "data_kind": prepared.kind}
    if prepared.levels >= 2 and prepared.kind == "image":
        cfg["levels"] = prepared.levels
    return recipe, cfg, models.get_family(family).Config.from_dict(cfg)  # the last: every value, defaults filled


def setup_pair(name: str, params: Params, prepared: dict[str, data.Prepared]) -> Setup:
    if name in ("made-pytorch-made", "made-nflows"):
        p = prepared["binarized-mnist"]
        recipe, cfg, c = genzoo_recipe(params, "made", p)
        make = made_karpathy if name == "made-pytorch-made" else made_nflows
        return Setup("made", p.name, cfg, recipe.train,
                     lambda: make(c.dim, list(c.hidden), c.lr, recipe.train.batch_size))
    if name == "vae-pythae":
        p = prepared["binarized-mnist"]
        recipe, cfg, c = genzoo_recipe(params, "vae", p)
        return Setup("vae", p.name, cfg, recipe.train,
                     lambda: PythaeVAEPeer(p.shape, c.hidden, c.latent_dim, c.lr, recipe.train.batch_size),
                     note="NLL: single-sample ELBO bound (same noise for both)")
    if name == "realnvp-zuko":
        p = prepared["ring8"]
        recipe, cfg, c = genzoo_recipe(params, "realnvp", p)
        return Setup("realnvp", p.name, cfg, recipe.train,
                     lambda: ZukoRealNVPPeer(c.dim, c.hidden, c.n_couplings, c.lr, recipe.train.batch_size))
    if name == "gan-dcgan":
        p = prepared["mnist"]
        recipe, cfg, c = genzoo_recipe(params, "gan", p, model_overrides={"pack": 1})
        return Setup("gan", p.name, cfg, recipe.train,
                     lambda: DCGANPeer(tuple(p.shape), c.latent_dim, c.width, c.lr, c.beta1, recipe.train.batch_size),
                     nll=False, note="GAN: no likelihood, throughput only; pack 1 (the grey_image recipe's PacGAN pack 4 "
                                     "off, so both are plain DCGANs)")
    raise SystemExit(f"unknown pair '{name}' (known: {', '.join(PAIRS)})")


PAIRS = ("made-pytorch-made", "made-nflows", "vae-pythae", "realnvp-zuko", "gan-dcgan")
DATASETS_OF = {"made-pytorch-made": "binarized-mnist", "made-nflows": "binarized-mnist", "vae-pythae": "binarized-mnist",
               "realnvp-zuko": "ring8", "gan-dcgan": "mnist"}


def genzoo_model(setup: Setup, train: torch.Tensor) -> tuple[models.GenerativeModel, dict]:
    torch.manual_seed(setup.train_cfg.seed)
    model = models.build(setup.family, setup.model_cfg)
    if setup.train_cfg.init_from_data:
        model.init_from_data(train)
    model.train()
    return model, model.configure_optimizers()


def genzoo_nll(model: models.GenerativeModel, x: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        if model.name == "vae":  # the single-sample ELBO with a fixed generator, as for the peer
            g = torch.Generator().manual_seed(1234)
            ll = torch.cat([model.elbo(x[i:i + 1000], generator=g) for i in range(0, len(x), 1000)])
        else:
            ll = torch.cat([model.log_likelihood(x[i:i + 1000]) for i in range(0, len(x), 1000)])
    model.train()
    return -ll.double().mean().item()


# ---------------------------------------------------------------------------------------------
# (a) throughput, alternating blocks
# ---------------------------------------------------------------------------------------------
def throughput(g_step: Callable, p_step: Callable, batches: list[torch.Tensor], seconds: float) -> dict[str, Any]:
    """Steps/s of each side from the median time of its blocks of `block` steps; the blocks alternate
    genzoo, peer, peer, genzoo, ... (ABBA), each about 0.1 s, so a burst of background load lands on
    both sides; the median drops the blocks a burst hit hardest."""
    def timed(fn: Callable, start: int, k: int) -> float:
        t0 = time.perf_counter()
        for i in range(k):
            fn(batches[(start + i) % len(batches)])
        return time.perf_counter() - t0

    warm = 3
    tg, tp = timed(g_step, 0, warm) / warm, timed(p_step, 0, warm) / warm  # warm-up and calibration
    block = max(1, round(0.1 / max(tg, tp)))
    rounds = max(6, 2 * round(seconds / (block * (tg + tp)) / 2))
    times: dict[str, list[float]] = {"genzoo": [], "peer": []}
    for r in range(rounds):
        order = [("genzoo", g_step), ("peer", p_step)]
        if r % 2:
            order.reverse()  # ABBA: neither side always runs first
        for side, fn in order:
            times[side].append(timed(fn, r * block, block))
    g_sps, p_sps = block / statistics.median(times["genzoo"]), block / statistics.median(times["peer"])
    paired = sorted(p / g for g, p in zip(times["genzoo"], times["peer"]))  # genzoo's speed / the peer's, per round
    return {"genzoo_steps_per_s": g_sps, "peer_steps_per_s": p_sps, "ratio": g_sps / p_sps,
            "genzoo_steps_per_s_mean": block * rounds / sum(times["genzoo"]),
            "peer_steps_per_s_mean": block * rounds / sum(times["peer"]),
            "ratio_paired_median": statistics.median(paired), "ratio_paired_p10": paired[len(paired) // 10],
            "ratio_paired_p90": paired[(9 * len(paired)) // 10], "block": block, "rounds": rounds}


# ---------------------------------------------------------------------------------------------
# (b) the race: two training threads taking turns
# ---------------------------------------------------------------------------------------------
class Turns:
    """A baton between named runners: exactly one runs at a time; a finished runner hands over for good."""

    def __init__(self, names: list[str]):
        self.names = names
        self.go = {n: threading.Event() for n in names}
        self.done: set[str] = set()
        self.lock = threading.Lock()

    def wait(self, name: str) -> None:
        self.go[name].wait()
        self.go[name].clear()

    def hand_over(self, name: str, finished: bool = False) -> None:
        with self.lock:
            if finished:
                self.done.add(name)
            i = self.names.index(name)
            for k in range(1, len(self.names) + 1):
                nxt = self.names[(i + k) % len(self.names)]
                if nxt not in self.done:
                    self.go[nxt].set()
                    return


class Runner:
    """One side of the race: its training clock (stopped while evaluating or waiting) and its NLL curve."""

    def __init__(self, name: str, turns: Turns, evaluate: Callable[[], float], threads: int, every: int):
        self.name, self.turns, self.evaluate, self.threads, self.every = name, turns, evaluate, threads, every
        self.clock, self.since = 0.0, 0.0
        self.curve: list[dict[str, float]] = []
        self.error: BaseException | None = None

    def checkpoint(self, step: int) -> None:
        """Called every slice of steps: evaluates every `every` steps, hands the baton over every time."""
        self.clock += time.perf_counter() - self.since
        if step % self.every == 0:
            self.curve.append({"step": step, "seconds": self.clock, "val_nll": self.evaluate()})
        self.turns.hand_over(self.name)
        self.turns.wait(self.name)
        self.since = time.perf_counter()

    def run(self, train: Callable[[Callable[[int], None]], None]) -> None:
        torch.set_num_threads(self.threads)  # per thread: OpenMP's thread count is a per-thread setting
        self.turns.wait(self.name)
        self.since = time.perf_counter()
        try:
            train(self.checkpoint)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
        finally:
            self.turns.hand_over(self.name, finished=True)


def race(setup: Setup, train: torch.Tensor, val: torch.Tensor, steps: int, points: int, threads: int,
         turns_per_point: int = 4) -> dict[str, Any]:
    every = max(1, steps // points)
    steps = every * (steps // every)
    slice_ = every // turns_per_point if every % turns_per_point == 0 else every  # steps between hand-overs
    model, _ = genzoo_model(setup, train)  # fit calls init_from_data and configure_optimizers again (cheap)
    torch.manual_seed(0)
    peer = setup.make_peer()
    # genzoo's "epochs" are the slices (fit's only hook is the epoch end); its schedule spans all `steps`
    cfg = dataclasses.replace(setup.train_cfg, steps_per_epoch=slice_, epochs=steps // slice_, val_examples=0)
    turns = Turns(["genzoo", "peer"])
    g = Runner("genzoo", turns, lambda: genzoo_nll(model, val), threads, every)
    p = Runner("peer", turns, lambda: peer.nll(val), threads, every)

    def genzoo_train(checkpoint: Callable[[int], None]) -> None:
        fit(model, train, cfg, val=None, on_epoch_end=lambda epoch, m, s: checkpoint(epoch * slice_), log=lambda m: None)

    threads_ = [threading.Thread(target=g.run, args=(genzoo_train,)),
                threading.Thread(target=p.run, args=(lambda cp: peer.train(train, steps, slice_, cp),))]
    for t in threads_:
        t.start()
    turns.go["genzoo"].set()
    for t in threads_:
        t.join()
    for r in (g, p):
        if r.error is not None:
            raise RuntimeError(f"{setup.family} race, {r.name} side failed: {r.error!r}") from r.error

    def first_time(curve: list[dict], target: float) -> float | None:
        return next((c["seconds"] for c in curve if c["val_nll"] <= target), None)

    target = p.curve[-1]["val_nll"]
    g_time, p_time = first_time(g.curve, target), first_time(p.curve, target)
    best = min(c["val_nll"] for c in p.curve)  # a noisy peer's last point can lie above its best
    return {"steps": steps, "eval_every": every, "hand_over_every": slice_, "train_config": cfg.to_dict(), "peer_lr": peer.lr,
            "genzoo_final_nll": g.curve[-1]["val_nll"], "peer_final_nll": target,
            "genzoo_time_to_peer_final": g_time, "peer_time_to_peer_final": p_time,
            "time_ratio": None if g_time is None else g_time / p_time,
            "peer_best_nll": best, "genzoo_time_to_peer_best": first_time(g.curve, best),
            "peer_time_to_peer_best": first_time(p.curve, best),
            "genzoo_loop_steps_per_s": steps / g.curve[-1]["seconds"], "peer_loop_steps_per_s": steps / p.curve[-1]["seconds"],
            "genzoo_curve": g.curve, "peer_curve": p.curve}


# ---------------------------------------------------------------------------------------------
def fmt(v: float | None, digits: int = 2) -> str:
    return "not reached" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = ["| pair | genzoo steps/s | peer steps/s | ratio | genzoo final val NLL | peer final val NLL | "
             "genzoo s to peer's final NLL | peer's s | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t, c = r["throughput"], r.get("race")
        cells = [r["pair"], fmt(t["genzoo_steps_per_s"], 1), fmt(t["peer_steps_per_s"], 1), f"{t['ratio']:.2f}x"]
        if c is None:
            cells += ["-"] * 5
        else:
            cells += [fmt(c["genzoo_final_nll"]), fmt(c["peer_final_nll"]), fmt(c["genzoo_time_to_peer_final"], 1),
                      fmt(c["peer_time_to_peer_final"], 1), "-" if c["time_ratio"] is None else f"{c['time_ratio']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loop_table(rows: list[dict]) -> str:
    lines = ["| pair | peer | batch | load (1 min) | bare-step ratio, paired median (p10..p90) | race steps | "
             "genzoo loop steps/s (fit) | peer loop steps/s | peer best val NLL | genzoo s to it | peer's s to it |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t, c = r["throughput"], r.get("race")
        cells = [r["pair"], r["peer"], str(r["batch_size"]), f"{r['loadavg_at_start'][0]:.2f}",
                 f"{t['ratio_paired_median']:.2f}x ({t['ratio_paired_p10']:.2f}..{t['ratio_paired_p90']:.2f})"]
        if c is None:
            cells += ["-"] * 6
        else:
            cells += [str(c["steps"]), fmt(c["genzoo_loop_steps_per_s"], 1), fmt(c["peer_loop_steps_per_s"], 1),
                      fmt(c["peer_best_nll"]), fmt(c["genzoo_time_to_peer_best"], 1), fmt(c["peer_time_to_peer_best"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads, both sides (default 2)")
    ap.add_argument("--steps", type=int, default=0, help="race budget per pair (0: the recipe's quick budget)")
    ap.add_argument("--pairs", default="all", help=f"comma-separated, from {','.join(PAIRS)} (default all)")
    ap.add_argument("--tp-seconds", type=float, default=8.0, help="throughput measurement seconds per side per pair")
    ap.add_argument("--points", type=int, default=20, help="evaluation points per race")
    ap.add_argument("--val-examples", type=int, default=0, help="validation rows (seeded subset; 0: the whole split)")
    ap.add_argument("--out", default=str(RESULTS), help="folder of peers.json and peers.md")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    pairs = list(PAIRS) if args.pairs == "all" else [p.strip() for p in args.pairs.split(",") if p.strip()]
    for p in pairs:
        if p not in PAIRS:
            raise SystemExit(f"unknown pair '{p}' (known: {', '.join(PAIRS)})")
    params = load_params(ROOT / "params.yaml")
    started, load_before = time.time(), os.getloadavg()

    prepared: dict[str, data.Prepared] = {}
    with tempfile.TemporaryDirectory(prefix="genzoo-peers-") as tmp:
        for name in sorted({DATASETS_OF[p] for p in pairs}):
            data.prepare(name, Path(tmp) / name, params.prepare.get(name, {}), ROOT / "data" / "raw",
                         os.environ.get("GENZOO_DATA_DIR"))
            prepared[name] = data.load(Path(tmp) / name)

    rows = []
    for name in pairs:
        setup = setup_pair(name, params, prepared)
        p = prepared[setup.dataset]
        train = p.tensor("train")
        val = p.subset("val", args.val_examples or None, seed=1234)
        bs = setup.train_cfg.batch_size
        gen = torch.Generator().manual_seed(0)
        batches = [train[torch.randint(len(train), (bs,), generator=gen)] for _ in range(64)]
        print(f"[{name}] throughput: genzoo {setup.family} vs peer, batch {bs}, {args.threads} threads ...", flush=True)
        model, opts = genzoo_model(setup, train)
        torch.manual_seed(0)
        peer = setup.make_peer()
        tp = throughput(lambda b: model.training_step(b, opts), peer.step, batches, args.tp_seconds)
        print(f"[{name}]   genzoo {tp['genzoo_steps_per_s']:.1f} steps/s, {peer.name} {tp['peer_steps_per_s']:.1f} "
              f"steps/s, ratio {tp['ratio']:.2f}x", flush=True)
        row = {"pair": name, "loadavg_at_start": os.getloadavg(), "family": setup.family, "dataset": setup.dataset, "peer": peer.name,
               "peer_desc": peer.desc, "batch_size": bs, "genzoo_config": setup.model_cfg, "note": setup.note,
               "throughput": tp}
        del model, opts, peer
        if setup.nll:
            steps = args.steps or setup.train_cfg.epochs * setup.train_cfg.steps_per_epoch or \
                setup.train_cfg.epochs * (len(train) // bs)
            print(f"[{name}] race: {steps} steps each, {len(val)} validation rows ...", flush=True)
            row["race"] = race(setup, train, val, steps, args.points, args.threads)
            c = row["race"]
            print(f"[{name}]   final NLL genzoo {c['genzoo_final_nll']:.3f}, peer {c['peer_final_nll']:.3f}; "
                  f"genzoo reached the peer's at {fmt(c['genzoo_time_to_peer_final'], 1)} s, "
                  f"the peer at {fmt(c['peer_time_to_peer_final'], 1)} s", flush=True)
        rows.append(row)

    out = {
        "command": " ".join([os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_seconds": round(time.time() - started, 1),
        "threads": args.threads, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, python {platform.python_version()}",
        "peer_versions": peer_versions(), "dropped": DROPPED, "pairs": rows,
    }
    md = render_md(out)
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "peers.json").write_text(json.dumps(out, indent=2) + "\n")
    (dest / "peers.md").write_text(md)
    print()
    print(md)


def peer_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "zuko", "nflows", "pythae"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def render_md(out: dict) -> str:
    rows = out["pairs"]
    la, lb = out["loadavg_before"], out["loadavg_after"]
    parts = [
        "# genzoo vs peers (`benchmarks/peers.py`)", "",
        f"{out['date']}, {out['machine']}, {out['threads']} threads; load average (1/5/15 min) before "
        f"{la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}, after {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}; {out['wall_seconds']} s in all. "
        f"Peers: {', '.join(f'{k} {v}' for k, v in out['peer_versions'].items())}.", "",
        "Steps/s: the bare train step (genzoo's `training_step` vs the peer's step), same batches, from the median "
        "of alternating ~0.1 s blocks. Race: each side's own loop (genzoo `fit` with its quick recipe; the peer's trainer or plain loop, "
        "same initial learning rate and batch, constant rate), the same step budget, taking turns; times are "
        "training seconds (evaluation excluded), at evaluation-point resolution; NLL in nats on the validation split. "
        "Targets: steps/s ratio >= 1.0x, time ratio <= 1.0x. The machine is shared: the second table gives the "
        "load average when each pair started (2 cores; above ~1, the other work competes with both sides, and "
        "at 2 threads each OpenMP barrier can wait for a preempted thread).", "",
        table(rows), "", loop_table(rows), "",
    ]
    for r in rows:
        parts.append(f"- **{r['pair']}** ({r['dataset']}, batch {r['batch_size']}): peer = {r['peer_desc']}."
                     + (f" {r['note']}." if r["note"] else ""))
    parts += ["", "Dropped: " + "; ".join(f"{k}: {v}" for k, v in out["dropped"].items()) + ".", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
