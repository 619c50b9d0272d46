"""Measure one recipe: train a family on a dataset with the settings params.yaml resolves (plus
--set overrides) in a bare torch loop (genzoo.training.fit, no services), then score it the way
the pipeline does. The recipe sweeps recorded in BENCHMARKS.md are made of these lines.

    python benchmarks/recipes.py gan ring8 --preset quick
    python benchmarks/recipes.py gan ring8 --preset quick --set gan.lr=0.001 --set train.batch_size=512
    python benchmarks/recipes.py made binarized-mnist --preset quick --threads 2

Scores: 2-D mixtures: modes captured, high-quality share, KL (2,500 samples); Stacked MNIST: the same
over its 1,000 modes (26,000 samples, each channel labelled by the evaluator); likelihood families:
test NLL (nats) on `--test` seeded test images (0: the whole split); image datasets: the share of
samples the dataset's evaluator puts in its most and least frequent class (classes hit, max share),
and FID on the evaluator's features. Each result is printed and appended as one JSON line to
benchmarks/results/recipes.jsonl with the date, the settings and the wall times.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepared_folder(dataset: str) -> Path:
    """data/prepared/<dataset>, prepared here when the pipeline has not done it yet."""
    import data
    from genzoo.config import load_params
    from genzoo.env import configure

    folder = ROOT / "data" / "prepared" / dataset
    if not (folder / "manifest.json").exists():
        configure()
        params = load_params(ROOT / "params.yaml")
        data.prepare(dataset, folder, params.prepare.get(dataset), ROOT / "data" / "raw")
    return folder


def score(model, prepared, n_samples: int, test_n: int, seed: int = 1234, parzen_n: int = 0,
          ecfg=None) -> dict:
    import numpy as np
    import torch

    from data import sources
    from genzoo.evaluation.metrics import mode_statistics
    from genzoo.training import log_likelihoods

    out: dict = {}
    t0 = time.perf_counter()
    if model.likelihood_kind != "none":
        test = prepared.subset("test", test_n or None, seed)
        torch.manual_seed(seed)
        out["test_nll"] = float(-log_likelihoods(model, test).mean())
        out.update(model.likelihood_notes())  # the RBM: AIS log Z and its certain lower bound
    out["likelihood_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([model.sample(min(1000, n_samples - i), gen) for i in range(0, n_samples, 1000)]).numpy()
    out["sample_seconds"] = time.perf_counter() - t0
    if parzen_n:
        out.update(parzen_score(x, prepared, parzen_n, seed))
    if prepared.name in ("ring8", "grid25"):
        std = {"ring8": 0.01, "grid25": 0.05}[prepared.name]
        out.update(mode_statistics(x, sources.mode_centers(prepared.name), std))
    evaluator = ROOT / "data" / "evaluators" / prepared.name / "evaluator.pt"
    if prepared.manifest.get("modes") and evaluator.exists():  # Stacked MNIST's 1,000 modes, as the pipeline counts
        from genzoo.config import EvalConfig
        from genzoo.evaluation.protocol import stacked_modes

        ecfg = ecfg or EvalConfig(seed=seed)
        out.update(stacked_modes(x, prepared, str(evaluator.parent), ecfg))
        x = x[:ecfg.n_image_samples]  # the rest on the image protocol's count, as the pipeline does
    if x.ndim == 4 and evaluator.exists():
        from genzoo.evaluation import networks, quality
        from genzoo.evaluation.networks import extract_features, predict_logits

        net, _ = networks.load(evaluator.parent)
        images = networks.as_images(x)
        if x.shape[1] == 1:
            labels = predict_logits(net, images).argmax(-1).numpy()
            share = np.bincount(labels, minlength=10) / len(labels)
            out.update(classes_hit=int((share > 0).sum()), max_class_share=float(share.max()),
                       min_class_share=float(share.min()))
        real = prepared.subset("test", 2000, seed)
        if prepared.kind == "binary":
            real = (real > 0.5).float()
        out["fid"] = quality.frechet_distance(extract_features(net, real), extract_features(net, images))
    return out


def parzen_score(x, prepared, rows: int, seed: int = 1234) -> dict:
    """--parzen N: the Parzen-window log-likelihood (nats) of N seeded test rows under the samples, sigma
    chosen on N seeded validation rows (genzoo/evaluation/protocol.py's protocol; flattened, float64)."""
    import warnings

    import numpy as np

    from genzoo.evaluation import quality

    t0 = time.perf_counter()
    flat = x.reshape(len(x), -1).astype(np.float64)
    val = prepared.subset("val", rows, seed).flatten(1).double().numpy()
    test = prepared.subset("test", rows, seed).flatten(1).double().numpy()
    grid = np.logspace(-3, 0.5, 15) if prepared.kind == "points" else quality.PARZEN_SIGMAS  # genzoo/evaluation/protocol.py
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sigma = quality.choose_parzen_sigma(flat, val, grid)
    ll = quality.parzen_log_likelihood(flat, test, sigma)
    return {"parzen_ll": float(ll.mean()), "parzen_ll_stderr": float(ll.std() / np.sqrt(len(ll))),
            "parzen_sigma": float(sigma), "parzen_rows": len(test), "parzen_samples": len(flat),
            "parzen_seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("family")
    p.add_argument("dataset")
    p.add_argument("--preset", default="quick")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--samples", type=int, default=0,
                   help="samples to score (default: params.yaml `evaluate`: 2,500 points, 10,000 images, "
                        "26,000 on Stacked MNIST)")
    p.add_argument("--test", type=int, default=2000, help="test rows for the NLL (0: whole split)")
    p.add_argument("--label", default="", help="a name for this line of the sweep")
    p.add_argument("--parzen", type=int, default=0, metavar="N",
                   help="also score the Parzen-window log-likelihood of N test rows (sigma from N val rows)")
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--save", metavar="DIR", help="also write the trained model (model.pt) and a sample picture here")
    args = p.parse_args(argv)

    import torch

    import data
    import models
    from genzoo.config import load_params, recipe_kind
    from genzoo.training import fit, flush_denormals

    flush_denormals()  # as every genzoo training does, before the first torch operation
    torch.set_num_threads(args.threads)
    params = load_params(ROOT / "params.yaml")
    prepared = data.load(prepared_folder(args.dataset))
    from genzoo.cli import _overrides  # the CLI's own --set parser: train.*, evaluate.*, <family>.*

    train_over, _, model_over = _overrides(args.set)
    kind = recipe_kind(list(prepared.shape), prepared.kind)
    recipe = params.resolve(args.family, kind, args.preset, train_over, model_over.get(args.family))
    mcfg = {**recipe.model, "data_shape": list(prepared.shape), "data_kind": prepared.kind}
    if prepared.manifest.get("levels", 0) >= 2:
        mcfg["levels"] = prepared.manifest["levels"]
    tcfg = recipe.train
    torch.manual_seed(tcfg.seed)
    model = models.build(args.family, mcfg)
    train = prepared.tensor("train")
    val = prepared.tensor("val", tcfg.val_examples) if tcfg.val_examples else None
    t0 = time.perf_counter()
    history = fit(model, train, tcfg, val=val, log=lambda m: print(m, flush=True))
    train_seconds = time.perf_counter() - t0
    ecfg = params.evaluate  # the protocol's sample counts (params.yaml `evaluate`)
    n = args.samples or (ecfg.n_samples if len(prepared.shape) == 1
                         else ecfg.n_mode_samples if prepared.manifest.get("modes") else ecfg.n_image_samples)
    result = {"date": dt.date.today().isoformat(), "family": args.family, "dataset": args.dataset,
              "recipe": recipe.name, "label": args.label, "set": args.set, "threads": args.threads,
              "epochs_run": len(history), "steps": int(history[-1].get("steps", 0)) if history else 0,
              "train_seconds": round(train_seconds, 1),
              **score(model, prepared, n, args.test, parzen_n=args.parzen, ecfg=ecfg)}
    print(json.dumps(result), flush=True)
    if args.save:
        from genzoo.plots import save_samples

        out_dir = Path(args.save)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save(out_dir / "model.pt")
        shown = model.sample(64 if len(prepared.shape) > 1 else 2500, torch.Generator().manual_seed(0)).numpy()
        save_samples(shown, out_dir / "samples.png", title=recipe.name)
    if not args.no_record:
        out = ROOT / "benchmarks" / "results" / "recipes.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
