"""How each generative family fills in missing pixels given the observed ones (genzoo/uses/inpaint.py).

Every sampler maps (trained family model, values x (n, 1, H, W) with 0 where missing, missing mask,
method config, CPU generator) -> one completion per row, observed pixels copied from x.

- made, pixelcnn (autoregressive): the missing pixels are drawn in the model's ordering (MADE: its
  mask's; PixelCNN: raster), each from p(x_d | x_<d) given everything before it, observed or drawn,
  with the observed pixels clamped as their turn comes (`sample_cached(..., known, observed)`). When
  every observed pixel comes before every missing one (the bottom half given the top half) that is
  exact ancestral sampling of p(x_missing | x_observed). Otherwise it ignores the observed pixels
  after each drawn one, so it is a proposal q, and `proposals` = K > 1 turns it into
  sampling-importance-resampling: K proposals per input, weights p(x) / q(x_missing) =
  prod_{observed d} p(x_d | x_<d) (one network pass), one proposal resampled by weight; exact as
  K -> infinity. `cond_nll` = log p(x_observed) - log p(x), exact only when the observed pixels all
  come first (then log p(x_observed) is the sum of their own conditionals); None otherwise.
- rbm: block Gibbs with the observed visibles clamped (the missing ones start from the base rates);
  the completion is the binary visible state after `gibbs_steps` sweeps.
- gsn: the GSN chain x -> corrupt -> P(x | x~) with the observed pixels clamped after every step
  (Bengio et al. 2014, section 4 shows such clamped-chain inpainting), started from the data
  moments; the completion is the state after `chain_steps` steps.
- vae: importance-weighted imputation as in MIWAE (Mattei & Frellsen 2019, "MIWAE: Deep Generative
  Modelling and Imputation of Incomplete Data Sets", ICML, arXiv:1812.02633, section 4): z_k ~
  q(z | x_fill) (K = `importance_samples`), weights w_k ∝ p(x_observed | z_k) p(z_k) / q(z_k | x_fill);
  x_fill's missing part starts at the decoder mean at z = 0 and is replaced `iterations` times by
  the weighted decoder mean sum_k w_k E[x_missing | z_k] (MIWAE's single imputation); the completion
  resamples one z_k by weight (MIWAE's multiple imputation by SIR) and shows its decoder mean.
  NOTE: MIWAE trains the VAE on incomplete data with zero-filled encoder inputs; here the VAE was
  trained on complete data, so the encoder gets the current imputation instead of zeros (the
  importance weights correct for any proposal); the completion is the decoder mean of the resampled
  z (how the vae family shows its samples), not a draw from p(x_missing | z).
- ddpm: RePaint (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic
  Models", CVPR, arXiv:2201.09865, Algorithm 1): at every reverse step the known pixels are a fresh
  draw of q(x_s | x_0) and the unknown ones the model's reverse step; `resample` = U > 1 repeats
  each step U times, diffusing the merged x_s back to x_t in between (jump length 1). On the
  sampler's timesteps (all T, or the model's `sample_steps` respacing); the completion is the
  nearest data level of the final x_0 (the family's sampler's output).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from models import markov


def _prefix_observed(order: torch.Tensor, missing: torch.Tensor) -> bool:
    """True when, in every row, every observed dimension comes before every missing one in `order`
    ((D,) place of each dimension); missing (n, D)."""
    place = order.to(missing.device).expand_as(missing)
    last_observed = torch.where(missing, -1, place).amax(1)
    first_missing = torch.where(missing, place, len(order)).amin(1)
    return bool((last_observed < first_missing).all())


def resample(log_w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of log_w (n, K), drawn with probability softmax(log_w)."""
    return torch.multinomial(torch.softmax(log_w.double().cpu(), 1), 1, generator=generator).squeeze(1)


# ----------------------------------------------------------------------------- MADE
def _made_log_probs(model, x: torch.Tensor, mask: int) -> torch.Tensor:
    """log p_m(x_d | x_<d) of every dimension (n, D) under connectivity m; x flat (n, D)."""
    return -F.binary_cross_entropy_with_logits(model.logits(x, mask), x, reduction="none")


@torch.no_grad()
def made_complete(model, x: torch.Tensor, missing: torch.Tensor, cfg: Any, generator: torch.Generator) -> torch.Tensor:
    dev, m_count = model.device, model.config.num_masks
    flat, miss = x.flatten(1).to(dev), missing.flatten(1).to(dev)  # (n, D)
    exact = all(_prefix_observed(model.order[m], miss) for m in range(m_count))
    k = 1 if exact else cfg.proposals
    rep, obs = flat.repeat_interleave(k, 0), ~miss.repeat_interleave(k, 0)  # (n k, D)
    which = torch.randint(m_count, (len(rep),), generator=generator)  # a mixture component per proposal
    u = torch.rand(rep.shape, generator=generator).to(dev)
    out, log_w = torch.empty_like(rep), torch.zeros(len(rep), device=dev)
    for m in which.unique().tolist():
        rows = (which == m).nonzero().squeeze(1).to(dev)
        out[rows] = model.sample_cached(u[rows], m, rep[rows], obs[rows])
        if k > 1:  # p_m(x) / q_m(x_missing): the observed dimensions' own conditionals
            log_w[rows] = (_made_log_probs(model, out[rows], m) * obs[rows]).sum(1)
    pick = resample(log_w.view(-1, k), generator) if k > 1 else torch.zeros(len(flat), dtype=torch.long)
    return out.view(len(flat), k, -1)[torch.arange(len(flat), device=dev), pick.to(dev)].view_as(x).cpu()


@torch.no_grad()
def made_cond_nll(model, x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor | None:
    """-log p(x_missing | x_observed) per row in nats for the mask-ensemble mixture, or None when
    some observed dimension comes after a missing one in some connectivity's ordering."""
    dev, m_count = model.device, model.config.num_masks
    flat, obs = x.flatten(1).to(dev), ~missing.flatten(1).to(dev)
    if not all(_prefix_observed(model.order[m], ~obs) for m in range(m_count)):
        return None
    per = [_made_log_probs(model, flat, m) for m in range(m_count)]  # (n, D) each
    log_joint = torch.logsumexp(torch.stack([p.sum(1) for p in per]), 0)  # the 1/M cancels
    log_observed = torch.logsumexp(torch.stack([(p * obs).sum(1) for p in per]), 0)
    return (log_observed - log_joint).cpu()


# ----------------------------------------------------------------------------- PixelCNN
def _pixel_log_probs(model, x_flat: torch.Tensor) -> torch.Tensor:
    """log p(x_i | x_<i) of every pixel (n, H*W); x_flat in [0, 1] on the model's levels."""
    logits = model(x_flat.view(-1, *model.config.data_shape)).flatten(2)  # (n, K, H*W)
    if model.config.data_kind == "binary":
        return -F.binary_cross_entropy_with_logits(logits[:, 0], x_flat, reduction="none")
    k = torch.round(x_flat * (model.config.levels - 1)).long().clamp(0, model.config.levels - 1)
    return F.log_softmax(logits, 1).gather(1, k.unsqueeze(1)).squeeze(1)


@torch.no_grad()
def pixelcnn_complete(model, x: torch.Tensor, missing: torch.Tensor, cfg: Any,
                      generator: torch.Generator) -> torch.Tensor:
    c, dev = model.config, model.device
    flat, miss = x.flatten(1).to(dev), missing.flatten(1).to(dev)
    k = 1 if _prefix_observed(torch.arange(c.dim), miss) else cfg.proposals
    rep, obs = flat.repeat_interleave(k, 0), ~miss.repeat_interleave(k, 0)  # (n k, D)
    levels = 2 if c.data_kind == "binary" else c.levels
    values = torch.arange(levels, device=dev, dtype=torch.float32) / (levels - 1)
    u = torch.rand(rep.shape, generator=generator).to(dev)
    out = model.sample_cached(u, values, rep, obs)  # (n k, D)
    if k == 1:
        return out.view_as(x).cpu()
    log_w = (_pixel_log_probs(model, out) * obs).sum(1).view(-1, k)  # (n, k)
    pick = resample(log_w, generator).to(dev)
    return out.view(len(flat), k, -1)[torch.arange(len(flat), device=dev), pick].view_as(x).cpu()


@torch.no_grad()
def pixelcnn_cond_nll(model, x: torch.Tensor, missing: torch.Tensor) -> torch.Tensor | None:
    """-sum over missing pixels of log p(x_i | x_<i), exact when every missing pixel comes after every
    observed one in raster order (else None)."""
    miss = missing.flatten(1).to(model.device)
    if not _prefix_observed(torch.arange(model.config.dim), miss):
        return None
    return -(_pixel_log_probs(model, x.flatten(1).to(model.device)) * miss).sum(1).cpu()


# ----------------------------------------------------------------------------- RBM and GSN
@torch.no_grad()
def rbm_complete(model, x: torch.Tensor, missing: torch.Tensor, cfg: Any, generator: torch.Generator) -> torch.Tensor:
    dev = model.device
    known, miss = x.flatten(1).to(dev), missing.flatten(1).to(dev)
    base = torch.sigmoid(model.base_bias().float().to(dev)).expand_as(known).contiguous()
    v = torch.where(miss, markov.bernoulli(base, generator), known)  # (n, D)
    for _ in range(cfg.gibbs_steps):
        v = torch.where(miss, model.gibbs_step(v, generator), known)
    return v.view_as(x).cpu()


@torch.no_grad()
def gsn_complete(model, x: torch.Tensor, missing: torch.Tensor, cfg: Any, generator: torch.Generator) -> torch.Tensor:
    known, miss = x.flatten(1).to(model.device), missing.flatten(1).to(model.device)
    state = torch.where(miss, model.initial_states(len(known), generator), known)  # (n, D)
    for _ in range(cfg.chain_steps):
        state = torch.where(miss, model.transition(state, generator), known)
    return state.view_as(x).cpu()


# ----------------------------------------------------------------------------- VAE
def _vae_weights(model, flat: torch.Tensor, obs: torch.Tensor, fill: torch.Tensor, k: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """z (k, n, L) ~ q(z | fill) and log w (k, n) = log p(x_obs | z) + log p(z) - log q(z | fill)."""
    n, d = flat.shape
    mu, log_var = model.encode(fill)  # (n, L) each
    eps = torch.randn((k, *mu.shape), generator=generator).to(mu.device)  # (k, n, L)
    z = mu + torch.exp(0.5 * log_var) * eps
    log_q = (-0.5 * eps**2 - 0.5 * log_var - 0.5 * math.log(2 * math.pi)).sum(-1)  # (k, n)
    log_prior = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_px = model.decoder_log_prob_dims(flat.expand(k, n, d).reshape(k * n, d), z.reshape(k * n, -1))
    return z, (log_px.view(k, n, d) * obs).sum(-1) + log_prior - log_q


@torch.no_grad()
def vae_complete(model, x: torch.Tensor, missing: torch.Tensor, cfg: Any, generator: torch.Generator) -> torch.Tensor:
    dev, k = model.device, cfg.importance_samples
    out = []
    step = max(1, 4096 // k)  # rows per pass: k importance samples of each
    start = model.decode_mean(torch.zeros(1, model.config.latent_dim, device=dev))  # (1, D)
    for i in range(0, len(x), step):
        flat = x[i:i + step].flatten(1).to(dev)  # (n, D)
        obs = ~missing[i:i + step].flatten(1).to(dev)
        fill = torch.where(obs, flat, start)
        for _ in range(cfg.iterations):  # MIWAE's single imputation, fed back to the encoder
            z, log_w = _vae_weights(model, flat, obs, fill, k, generator)
            means = model.decode_mean(z.flatten(0, 1)).view(k, len(flat), -1)  # (k, n, D)
            fill = torch.where(obs, flat, (torch.softmax(log_w, 0).unsqueeze(-1) * means).sum(0))
        z, log_w = _vae_weights(model, flat, obs, fill, k, generator)
        pick = resample(log_w.t(), generator).to(dev)  # (n,): SIR, one z per row
        chosen = model.decode_mean(z[pick, torch.arange(len(flat), device=dev)])  # (n, D)
        out.append(torch.where(obs, flat, chosen).cpu())
    return torch.cat(out).view_as(x)


# ----------------------------------------------------------------------------- DDPM
@torch.no_grad()
def ddpm_complete(model, x: torch.Tensor, missing: torch.Tensor, cfg: Any, generator: torch.Generator) -> torch.Tensor:
    dev = model.device
    x0 = model.to_model_space(x.to(dev))
    keep = ~missing.to(dev)
    steps = model.sampler().timesteps  # T ... 1, respaced when the model samples with fewer steps
    xt = model.noise(tuple(x0.shape), generator)
    for i, t in enumerate(steps):
        ab_t = model.alpha_bar[t - 1]
        ab_s = model.alpha_bar[steps[i + 1] - 1] if i + 1 < len(steps) else ab_t.new_tensor(1.0)
        beta = 1 - ab_t / ab_s
        last = i + 1 == len(steps)
        for u in range(cfg.resample):
            eps = model.net(xt, torch.full((len(xt),), t, device=dev, dtype=torch.long))
            x0_hat = (xt - (1 - ab_t).sqrt() * eps) / ab_t.sqrt()
            if model.levels is not None:
                x0_hat = x0_hat.clamp(-1, 1)
            unknown = ab_s.sqrt() * beta / (1 - ab_t) * x0_hat + (1 - beta).sqrt() * (1 - ab_s) / (1 - ab_t) * xt
            if not last:
                var = beta if model.config.sigma2 == "beta" else beta * (1 - ab_s) / (1 - ab_t)
                unknown = unknown + var.sqrt() * model.noise(tuple(xt.shape), generator)
            known = x0 if last else ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * model.noise(tuple(x0.shape), generator)
            xs = torch.where(keep, known, unknown)
            if u + 1 < cfg.resample and not last:  # RePaint's jump back: x_t ~ q(x_t | x_s)
                xt = (ab_t / ab_s).sqrt() * xs + beta.sqrt() * model.noise(tuple(xs.shape), generator)
        xt = xs
    if model.levels is not None:  # the nearest level, as the family's sampler returns
        xt = torch.round((xt.clamp(-1, 1) + 1) / 2 * (model.levels - 1)) / (model.levels - 1)
    return torch.where(keep, x.to(dev), xt).cpu()


Complete = Callable[[Any, torch.Tensor, torch.Tensor, Any, torch.Generator], torch.Tensor]
# family -> (sampler, exact conditional NLL or None)
SAMPLERS: dict[str, tuple[Complete, Callable | None]] = {
    "made": (made_complete, made_cond_nll),
    "pixelcnn": (pixelcnn_complete, pixelcnn_cond_nll),
    "rbm": (rbm_complete, None),
    "gsn": (gsn_complete, None),
    "vae": (vae_complete, None),
    "ddpm": (ddpm_complete, None),
}
