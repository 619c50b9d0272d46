"""The evaluation protocol: how many samples a model is judged on and which measures apply to
its data, each computed as its paper defines it (genzoo.evaluation.metrics, .quality) on the
dataset's evaluator network (.networks) or Inception-v3 (.inception). No services here: the
pipeline's evaluate task calls `measure` and logs what it returns.

What applies to which data:
- every model: its test likelihood (exact, bound or estimate) where its family has one, and the
  legacy Parzen-window estimate; every dataset's trivial baseline is measured the same way;
- vectors of any width D (data shape (D,): tabular rows, binary vectors, 2-D points): energy
  distance, mean per-feature Wasserstein-1 and, for D >= 2, the correlation error (real values) or
  the co-occurrence error (binary) of the samples against the test rows (.vectors);
- 2-D mixtures (ring8, grid25) also: modes captured, high-quality share, KL to uniform (.metrics);
- images: FID, KID, precision/recall, density/coverage (and class shares) on the evaluator's
  features; Stacked MNIST also its 1,000 modes."""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

import data
import models
from data import sources
from genzoo.config import EvalConfig
from genzoo.evaluation import networks, quality, vectors
from genzoo.evaluation.metrics import likelihood_summary, mode_histogram_statistics, mode_statistics, stacked_mode_ids
from genzoo.training import log_likelihoods

MIXTURES = {"ring8": 0.01, "grid25": 0.05}  # dataset -> default std of the modes
POINT_SIGMAS = np.logspace(-3, 0.5, 15)  # Parzen grid for 2-D points (modes of std 0.01 to 0.05)


def sample_count(manifest: dict, ecfg: EvalConfig) -> int:
    """Samples drawn for evaluation: the 2-D protocol's or the image protocol's count, and on Stacked
    MNIST enough to count its 1,000 modes."""
    n = ecfg.n_samples if len(manifest["shape"]) == 1 else ecfg.n_image_samples
    return max(n, ecfg.n_mode_samples) if manifest.get("modes") else n


def draw(model: models.GenerativeModel, n: int, seed: int, budget_seconds: float, minimum: int) -> tuple[np.ndarray, float]:
    """Up to n samples in batches of 256 from one seeded generator; stops early once the time
    budget is spent (never below `minimum`). Returns (samples, seconds per sample)."""
    gen = torch.Generator().manual_seed(seed)
    parts, drawn, t0 = [], 0, time.perf_counter()
    while drawn < n:
        size = min(256 if drawn else min(n, 64), n - drawn)
        parts.append(model.sample(size, gen).numpy())
        drawn += size
        if drawn >= minimum and time.perf_counter() - t0 > budget_seconds:
            break
    return np.concatenate(parts), (time.perf_counter() - t0) / drawn


def family_likelihood(model: models.GenerativeModel, prepared: data.Prepared, ecfg: EvalConfig) -> dict:
    test = prepared.subset("test", ecfg.likelihood_examples, ecfg.seed)
    torch.manual_seed(ecfg.seed)
    ll = (log_likelihoods(model, test) if isinstance(model, torch.nn.Module) else model.log_likelihood(test)).numpy()
    if not np.isfinite(ll).all():
        raise ValueError(f"{model.name}-{prepared.name}: the test log-likelihood is not finite")
    notes = model.likelihood_notes() if isinstance(model, models.GenerativeModel) else {}
    return {**likelihood_summary(ll, int(np.prod(prepared.shape)), prepared.kind),
            "likelihood_method": model.likelihood_method or model.likelihood_kind, **notes}


def parzen(samples: np.ndarray, prepared: data.Prepared, ecfg: EvalConfig) -> dict:
    """Goodfellow et al. (2014) Parzen window: sigma chosen on validation rows, mean over test rows."""
    flat = samples.reshape(len(samples), -1).astype(np.float64)
    val = prepared.subset("val", ecfg.parzen_examples, ecfg.seed).flatten(1).double().numpy()
    test = prepared.subset("test", ecfg.parzen_examples, ecfg.seed).flatten(1).double().numpy()
    grid = POINT_SIGMAS if prepared.kind == "points" else quality.PARZEN_SIGMAS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # edge-of-grid notice: the sigma is logged anyway
        sigma = quality.choose_parzen_sigma(flat, val, grid)
    ll = quality.parzen_log_likelihood(flat, test, sigma)
    return {"parzen_ll": float(ll.mean()), "parzen_ll_stderr": float(ll.std() / np.sqrt(len(ll))),
            "parzen_sigma": sigma}


def is_vector(prepared: data.Prepared) -> bool:
    """Data whose examples are vectors (shape (D,)), judged on their own coordinates."""
    return len(prepared.shape) == 1


def vector_quality(samples: np.ndarray, prepared: data.Prepared, ecfg: EvalConfig) -> dict:
    """Energy distance, marginal W1 and correlation (or co-occurrence) error against test rows."""
    test = prepared.subset("test", ecfg.real_examples, ecfg.seed).flatten(1).double().numpy()
    return vectors.vector_quality(samples, test, prepared.kind, seed=ecfg.seed)


def image_quality(samples: np.ndarray, prepared: data.Prepared, evaluator_dir: str, ecfg: EvalConfig) -> dict:
    """FID, KID, precision/recall, density/coverage on the evaluator's penultimate features; with
    evaluate.fid_network 'inception' also `inception_fid` on Inception-v3 features (genzoo/evaluation/inception.py)."""
    net, meta = networks.load(evaluator_dir)
    real = prepared.subset("test", ecfg.real_examples, ecfg.seed)
    if prepared.kind == "binary":
        real = (real > 0.5).float()
    f_real = networks.extract_features(net, real)
    images = networks.as_images(samples)
    f_fake = networks.extract_features(net, images)
    k = min(5, len(f_fake) - 1, len(f_real) - 1)
    with warnings.catch_warnings():  # the small-sample case is reported once, below
        warnings.simplefilter("ignore", quality.SmallSampleWarning)
        out = {"fid": quality.frechet_distance(f_real, f_fake),
               **quality.kernel_inception_distance(f_real, f_fake, subsets=50,
                                                   subset_size=min(1000, len(f_fake), len(f_real)), seed=ecfg.seed),
               **quality.precision_recall(f_real, f_fake, k=min(3, k)),
               **quality.density_coverage(f_real, f_fake, k=k)}
    if ecfg.fid_network == "inception":  # optional extra ruler: same samples, same real images
        from genzoo.evaluation import inception

        inception_net = inception.load()
        fakes = inception.inception_features(images, inception_net)
        out["inception_fid"] = quality.frechet_distance(inception.inception_features(real, inception_net), fakes)
        out["inception_fid_samples"] = len(fakes)
    if not hasattr(net, "predict_digits"):  # one label per image: how the samples spread over the classes
        from genzoo.baselines import class_shares
        out.update(class_shares(networks.predict_logits(net, images).argmax(-1).numpy(), net.config.num_classes))
    out["evaluator_test_accuracy"] = meta["test_accuracy"]
    out["metric_samples"], out["metric_real"] = len(f_fake), len(f_real)
    if min(len(f_fake), len(f_real)) < quality.MIN_RECOMMENDED_SAMPLES:
        out["small_sample_warning"] = f"{len(f_fake)} samples / {len(f_real)} real: fewer than 10,000, noisy"
        out["small_sample_warning"] = (f"{prepared.name} quality metrics from {len(f_fake):,} samples and {len(f_real):,} real "
              f"images (the protocol: 10,000 of each, the real ones limited by the test split): noisy")
    return out


def stacked_modes(samples: np.ndarray, prepared: data.Prepared, evaluator_dir: str, ecfg: EvalConfig) -> dict:
    """Stacked MNIST mode coverage (Metz et al. 2017; VEEGAN; PacGAN): the evaluator's digit
    classifier labels each channel, a sample's mode is 100 * d0 + 10 * d1 + d2; modes captured
    and KL(mode histogram || uniform over the manifest's `modes`), in nats."""
    num_modes = int(prepared.manifest["modes"])
    net, _ = networks.load(evaluator_dir)
    if not hasattr(net, "predict_digits"):
        raise ValueError(f"{prepared.name} counts its {num_modes} modes channel by channel, but the evaluator in "
                         f"{evaluator_dir} classifies whole images; set evaluators.{prepared.name}.per_channel in params.yaml")
    classes = net.digit.config.num_classes
    if classes ** net.channels != num_modes:
        raise ValueError(f"{prepared.name} has {num_modes} modes, but its evaluator tells {classes} classes "
                         f"in each of {net.channels} channels ({classes ** net.channels} modes)")
    digits = net.predict_digits(networks.as_images(samples))  # (n, channels)
    out = {**mode_histogram_statistics(stacked_mode_ids(digits, classes), num_modes), "mode_samples": len(samples)}
    if len(samples) < ecfg.n_mode_samples:
        out["mode_sample_warning"] = f"{len(samples)} samples: fewer than {ecfg.n_mode_samples:,} (the protocol's count)"
        out["mode_sample_warning"] = (f"{prepared.name} mode statistics from {len(samples)} samples "
                                      f"(< {ecfg.n_mode_samples:,}): modes captured is biased low")
    return out


def measure(model, dataset: str, prepared: data.Prepared, samples: np.ndarray, ecfg: EvalConfig,
            evaluator_dir: str | None) -> dict:
    """Every measure that applies to a model (a family, or the dataset's baseline) and its samples."""
    out: dict[str, float | str] = {"likelihood_kind": model.likelihood_kind}
    if dataset in MIXTURES and prepared.kind == "points":
        std = prepared.manifest["params"].get("std", MIXTURES[dataset])
        out.update(mode_statistics(samples, sources.mode_centers(dataset), std))
    if prepared.manifest.get("modes"):  # Stacked MNIST: mode counts on all samples, the rest on the image protocol's
        if evaluator_dir is None:
            raise ValueError(f"{dataset} counts modes with its evaluator, but none is trained; add it to params.yaml evaluators")
        out.update(stacked_modes(samples, prepared, evaluator_dir, ecfg))
        samples = samples[:ecfg.n_image_samples]
    if model.likelihood_kind != "none":
        out.update(family_likelihood(model, prepared, ecfg))
    out.update(parzen(samples, prepared, ecfg))
    if is_vector(prepared):
        out.update(vector_quality(samples, prepared, ecfg))
    if evaluator_dir is not None:
        out.update(image_quality(samples, prepared, evaluator_dir, ecfg))
    return out


