"""`genzoo reproduce TABLE`: our numbers beside the published tables of the papers (a benchmark, not a test).

    genzoo reproduce binarized-mnist [--budget cpu|full]   test NLL (nats) on the fixed binarized MNIST
    genzoo reproduce parzen-mnist    [--budget cpu|full]   Parzen-window log-likelihood (nats) on MNIST

Each row with a genzoo family is trained and evaluated by the ordinary pipeline flow
(prepare under DVC, Ray Train, MLflow runs; one flow run per row, so two MADE variants
can sit in one table), with the paper's architecture and evaluation protocol where the
budget allows. Rows without a genzoo family (NADE, DBN, ...) are printed as references.
The models are not registered: a reproduction is not a candidate for `champion`.

Budgets:
- `cpu` (default): cut for a 2-core CPU machine (wall times in BENCHMARKS.md). The
  architectures are the papers' where they are cheap (MADE, the VAE, the RBM, GMMN) and
  cut where they are not (PixelCNN, GSN); training runs hundreds to a few thousand steps
  instead of hundreds of epochs;
  the likelihoods are measured on the whole test set, except the VAE's IWAE-5000 bound
  (1,000 test images drawn with a fixed seed, with the standard error). The table
  says all of this in its protocol column and prints the gap to the published number.
- `full`: the papers' architectures, 50 full epochs (still far fewer than the papers'),
  the whole test set, IWAE-5000 and AIS with 100 runs x 14,500 temperatures. Meant for
  a GPU machine (`use_gpu` is picked up from the Ray cluster).
Trainings already finished with the same data version and config are reused (as in
`genzoo run`), so a second call only evaluates; `--retrain` trains again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

BUDGETS = ("cpu", "full")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One published row, and the genzoo family + settings that reproduce it (None: a reference only)."""

    label: str
    published: float
    stderr: float | None
    citation: str
    family: str | None = None
    model: dict[str, Any] = dataclasses.field(default_factory=dict)  # the paper's architecture
    cuts: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # budget -> model settings cut for it
    train: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # budget -> train settings
    evaluate: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # budget -> extra evaluate settings
    deviation: str = ""  # what differs from the paper whatever the budget

    def settings(self, budget: str) -> tuple[dict, dict, dict]:
        """(model overrides, train overrides, evaluate overrides) of this row under `budget`."""
        return ({**self.model, **self.cuts.get(budget, {})}, dict(self.train.get(budget, {})),
                dict(self.evaluate.get(budget, {})))


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    dataset: str
    metric: str  # row key of the pipeline result: 'test_nll' (lower is better) or 'parzen_ll' (higher is better)
    unit: str
    lower_is_better: bool
    evaluate: dict[str, dict[str, Any]]  # budget -> evaluate overrides for every row
    entries: tuple[Entry, ...]
    about: str

    def gap(self, ours: float, published: float) -> float:
        """How much worse ours is than the published number (positive: worse), in the table's unit."""
        return ours - published if self.lower_is_better else published - ours


_FULL_TRAIN = {"epochs": 50, "steps_per_epoch": 0, "batch_size": 100, "val_examples": 1000}

BINARIZED_MNIST = Table(
    name="binarized-mnist", dataset="binarized-mnist", metric="test_nll", unit="nats", lower_is_better=True,
    about="Negative log-likelihood of the fixed binarized MNIST test set (Larochelle & Murray 2011 split), nats "
          "per image: exact for MADE and PixelCNN, the IWAE-5000 bound for the VAE, an AIS estimate for the RBM.",
    # cpu: the whole test set (a likelihood is cheap once trained), except the VAE's IWAE-5000 (below); few
    # samples with a short budget: the table needs no samples, Parzen and FID of these runs are side notes.
    evaluate={"cpu": {"likelihood_examples": 0, "n_image_samples": 256, "sample_budget_seconds": 30},
              "full": {"likelihood_examples": 0}},
    entries=(
        Entry("MADE, 1 hidden layer, 1 mask", 88.40, None, "Germain et al. 2015, Table 4", "made",
              model={"hidden": [500], "num_masks": 1},
              train={"cpu": {"epochs": 10, "steps_per_epoch": 0, "batch_size": 100}, "full": _FULL_TRAIN},
              deviation="Adam instead of Adagrad; no early stopping"),
        Entry("MADE, 1 hidden layer, 32 masks", 88.04, None, "Germain et al. 2015, Table 4", "made",
              model={"hidden": [500], "num_masks": 32},
              train={"cpu": {"epochs": 10, "steps_per_epoch": 0, "batch_size": 100}, "full": _FULL_TRAIN},
              deviation="Adam instead of Adagrad; no early stopping"),
        Entry("MADE, 2 hidden layers, 32 masks", 86.64, None, "Germain et al. 2015, Table 4", "made",
              model={"hidden": [500, 500], "num_masks": 32},
              train={"cpu": {"epochs": 10, "steps_per_epoch": 0, "batch_size": 100}, "full": _FULL_TRAIN},
              deviation="Adam instead of Adagrad; no early stopping"),
        Entry("NADE, 1 hidden layer", 88.33, None, "Larochelle & Murray 2011 (as quoted by Germain et al. 2015)"),
        Entry("PixelCNN", 81.30, None, "van den Oord et al. 2016 (Pixel RNN paper), Table 4", "pixelcnn",
              model={"channels": 64, "layers": 12},
              cuts={"cpu": {"channels": 16, "layers": 6}},
              train={"cpu": {"epochs": 3, "steps_per_epoch": 200, "batch_size": 128}, "full": _FULL_TRAIN},
              deviation="genzoo's gated PixelCNN (van den Oord et al. 2016b blocks), its own width and depth"),
        Entry("RBM, 500 hidden, CD-25", 86.34, None, "Salakhutdinov & Murray 2008, Table 2 (AIS estimate)", "rbm",
              model={"hidden": 500, "k": 25, "ais_runs": 100, "ais_temperatures": 14500, "ais_schedule": "piecewise"},
              train={"cpu": {"epochs": 4, "steps_per_epoch": 500, "batch_size": 100, "val_examples": 0},
                     "full": {**_FULL_TRAIN, "val_examples": 0}},  # no per-epoch AIS: 14,500 temperatures each
              deviation="momentum 0.5, no weight-decay schedule"),
        Entry("VAE, 1 stochastic layer, k=1", 86.76, None, "Burda et al. 2016 (IWAE paper), Table 1", "vae",
              model={"latent_dim": 50, "hidden": 200, "iwae_k": 5000},
              evaluate={"cpu": {"likelihood_examples": 1000}},  # 5,000 importance samples each: a seeded subset
              train={"cpu": {"epochs": 20, "steps_per_epoch": 0, "batch_size": 100, "val_examples": 0},
                     "full": {**_FULL_TRAIN, "val_examples": 0}},  # no per-epoch IWAE-5000 on validation
              deviation="ReLU hidden units (paper: tanh); 20 or 50 epochs instead of 3,280"),
    ),
)

# Goodfellow et al. 2014 (Table 1) and Li et al. 2015 (Table 1): a Gaussian Parzen window
# fitted to 10,000 samples, sigma chosen on the validation set, mean over the 10,000 test images.
_PARZEN_EVAL = {"n_image_samples": 10000, "parzen_examples": 10000, "sample_budget_seconds": 600,
                "likelihood_examples": 1000}
# cpu: Markov-chain samplers (GSN) stop after 2 minutes, with fewer than 10,000 samples (the count is logged)
_PARZEN_CPU = {**_PARZEN_EVAL, "sample_budget_seconds": 120}
PARZEN_MNIST = Table(
    name="parzen-mnist", dataset="mnist", metric="parzen_ll", unit="nats", lower_is_better=False,
    about="Parzen-window log-likelihood of the MNIST test images (pixels in [0, 1]), nats per image, from "
          "10,000 samples, sigma chosen on 10,000 validation images: the legacy protocol of Goodfellow et al. "
          "2014, which Theis et al. 2016 show can rank models wrongly.",
    evaluate={"cpu": _PARZEN_CPU, "full": _PARZEN_EVAL},
    entries=(
        Entry("DBN", 138, 2, "Goodfellow et al. 2014, Table 1 (from Bengio et al. 2013)"),
        Entry("Stacked CAE", 121, 1.6, "Goodfellow et al. 2014, Table 1"),
        Entry("Deep GSN", 214, 1.1, "Goodfellow et al. 2014, Table 1 (from Bengio et al. 2014)", "gsn",
              model={"hidden": 1500, "walkback": 3},
              cuts={"cpu": {"hidden": 500}},
              train={"cpu": {"epochs": 3, "steps_per_epoch": 200, "batch_size": 100}, "full": _FULL_TRAIN},
              deviation="one hidden layer (the generalised denoising autoencoder case), not the deep GSN"),
        Entry("Adversarial nets", 225, 2, "Goodfellow et al. 2014, Table 1", "gan",
              train={"cpu": {"epochs": 3, "steps_per_epoch": 200, "batch_size": 100}, "full": _FULL_TRAIN},
              deviation="DCGAN-style convolutional players (paper: MLP generator, maxout discriminator)"),
        Entry("GMMN", 147, 2, "Li et al. 2015, Table 1", "gmmn",
              model={"latent_dim": 10, "hidden": [64, 256, 256, 1024]},
              train={"cpu": {"epochs": 3, "steps_per_epoch": 50, "batch_size": 1000}, "full": _FULL_TRAIN},
              deviation="Adam; fixed bandwidth set"),
        Entry("GMMN+AE", 282, 2, "Li et al. 2015, Table 1", "gmmn",
              model={"latent_dim": 10, "hidden": [64, 256, 256], "autoencoder": True, "code_dim": 32},
              train={"cpu": {"epochs": 3, "steps_per_epoch": 50, "batch_size": 1000}, "full": _FULL_TRAIN},
              deviation="autoencoder trained jointly, no dropout or layer-wise pretraining"),
    ),
)

TABLES = {t.name: t for t in (BINARIZED_MNIST, PARZEN_MNIST)}


def check(table: Table, budget: str, root: Path) -> None:
    """Every trained row's settings pass the pipeline's checks before anything runs."""
    from flows.pipeline import plan

    for e in table.entries:
        if e.family:
            model, train, evaluate = e.settings(budget)
            plan([e.family], [table.dataset], "full", root, train, {e.family: model},
                 {**table.evaluate.get(budget, {}), **evaluate})


def select(table: Table, rows: list[str] | None) -> list[Entry]:
    """The trained rows, or those whose family or label contains one of `rows` (case-insensitive)."""
    trained = [e for e in table.entries if e.family]
    if not rows:
        return trained
    wanted = [r.lower() for r in rows]
    chosen = [e for e in trained if any(w == e.family or w in e.label.lower() for w in wanted)]
    if not chosen:
        from models.base import ConfigError

        raise ConfigError(f"no row of {table.name} matches {', '.join(rows)} "
                          f"(rows: {'; '.join(e.label for e in trained)})")
    return chosen


def run(table: Table, budget: str, root: Path, retrain: bool = False, log=print,
        rows: list[str] | None = None) -> list[dict[str, Any]]:
    """Train and evaluate the table's rows with a family (or the `rows` selected), one pipeline flow
    run each; returns the result rows."""
    from flows.pipeline import pipeline
    from tasks.services import ensure_ray

    trained = select(table, rows)
    check(table, budget, root)
    owns_ray = ensure_ray()
    results = []
    try:
        for i, e in enumerate(trained, 1):
            model, train, evaluate = e.settings(budget)
            log(f"[reproduce {table.name}] {i}/{len(trained)}: {e.label} ({e.family}, {budget} budget)")
            t0 = time.perf_counter()
            out = pipeline(families=[e.family], datasets=[table.dataset], preset="full", train_overrides=train,
                           model_overrides={e.family: model}, evaluate_overrides={**table.evaluate.get(budget, {}),
                                                                                  **evaluate},
                           register_models=False, reuse_trainings=not retrain)
            row = out["rows"][0] if out["rows"] else {"status": "FAILED", "reason": "no training ran"}
            results.append({"entry": e.label, "family": e.family, "model": model, "train": train,
                            "evaluate": {**table.evaluate.get(budget, {}), **evaluate},
                            "status": row.get("status"), "reason": row.get("reason", ""),
                            "value": row.get(table.metric), "stderr": row.get(f"{table.metric}_stderr"),
                            "likelihood_method": row.get("likelihood_method"), "run_id": row.get("run_id"),
                            "pipeline_run": out["run_name"], "train_seconds": row.get("train_seconds"),
                            "seconds": time.perf_counter() - t0})
    finally:
        if owns_ray:
            import ray

            ray.shutdown()
    return results


def _num(v: float | None, stderr: float | None = None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}" + (f" ± {stderr:.2f}" if stderr else "")


def render(table: Table, budget: str, results: list[dict[str, Any]]) -> str:
    """The Markdown table: published beside ours, the gap, and the protocol of our number."""
    by_label = {r["entry"]: r for r in results}
    better = "lower" if table.lower_is_better else "higher"
    lines = [f"## genzoo reproduce {table.name} (budget: {budget})", "", table.about,
             f"{better.capitalize()} is better; gap = how much worse ours is ({table.unit}, positive: worse).", "",
             f"| model | published ({table.unit}) | ours ({table.unit}) | gap | genzoo family and protocol | source |",
             "|---|---|---|---|---|---|"]
    for e in table.entries:
        r = by_label.get(e.label)
        if r is None:
            ours, gap, protocol = ("not in genzoo" if e.family is None else "not run"), "-", e.family or "-"
        elif r["status"] != "FINISHED" or r["value"] is None:
            ours, gap, protocol = f"failed: {r['reason']}", "-", e.family
        else:
            ours, gap = _num(r["value"], r["stderr"]), f"{table.gap(r['value'], e.published):+.2f}"
            train = r["train"]
            steps = "full passes" if not train.get("steps_per_epoch") else f"x {train['steps_per_epoch']} steps"
            settings = ", ".join(f"{k}={v}" for k, v in r["model"].items())
            protocol = (f"{e.family} ({settings}); {train.get('epochs')} epochs {steps}, batch {train.get('batch_size')}"
                        + (f"; {r['likelihood_method']}" if r.get("likelihood_method") and table.metric == "test_nll" else "")
                        + (f" on {r['evaluate'].get('likelihood_examples') or 'all'} test images"
                           if table.metric == "test_nll" else "")
                        + (f"; differs: {e.deviation}" if e.deviation else ""))
        lines.append(f"| {e.label} | {_num(e.published, e.stderr)} | {ours} | {gap} | {protocol} | {e.citation} |")
    ev = table.evaluate.get(budget, {})
    lines += ["", "Evaluation settings: " + (", ".join(f"{k}={v}" for k, v in ev.items()) or "params.yaml defaults")
              + " (likelihood_examples=0: the whole test set)."]
    return "\n".join(lines) + "\n"


def merge_previous(table: Table, budget: str, results: list[dict[str, Any]], root: Path) -> list[dict[str, Any]]:
    """This call's rows plus, for rows not run this time (`--rows`), the last written result of that row."""
    saved = root / "reports" / "reproduce" / f"{table.name}-{budget}.json"
    done = {r["entry"] for r in results}
    previous = json.loads(saved.read_text())["results"] if saved.is_file() else []
    return results + [r for r in previous if r["entry"] not in done]


def write(table: Table, budget: str, results: list[dict[str, Any]], root: Path) -> Path:
    out = root / "reports" / "reproduce"
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{table.name}-{budget}.md"
    md.write_text(render(table, budget, results))
    (out / f"{table.name}-{budget}.json").write_text(json.dumps(
        {"table": table.name, "budget": budget, "dataset": table.dataset, "metric": table.metric,
         "published": {e.label: [e.published, e.stderr] for e in table.entries}, "results": results},
        indent=2, default=str) + "\n")
    return md
