"""How far an RBM's AIS estimate of log Z is from converged: rerun AIS on one saved model with more
runs, more temperatures and other seeds, and report log Z and the test NLL each setting gives.

AIS is unbiased for Z, so log Z_AIS is biased low (Jensen) and the NLL it gives, F(x) + log Z, is
optimistic whenever the chains do not anneal well; a too-short schedule shows as log Z rising
with the temperature count long after the quoted standard error says it has settled.

    python benchmarks/recipes.py rbm binarized-mnist --preset standard --samples 16 --test 0 --save /tmp/rbm
    python benchmarks/ais_check.py /tmp/rbm/model.pt 100:14500:0 100:50000:13 100:150000:14

Each setting is RUNS:TEMPERATURES:SEED (Salakhutdinov & Murray's piecewise spacing, scaled);
every result is printed and appended to benchmarks/results/ais_check.jsonl, beside the certain
lower bound on log Z (models.markov.log_partition_lower_bound, `--bound-chains` chains of
`--bound-steps` Gibbs steps from the fantasy particles and base rates): an AIS estimate below it is
wrong by at least the difference, and mean F(test) + bound is a floor under the true test NLL.
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


def parse_setting(text: str) -> tuple[int, int, int]:
    try:
        runs, temps, seed = (int(x) for x in text.split(":"))
    except ValueError:
        raise SystemExit(f"error: a setting is RUNS:TEMPERATURES:SEED, got {text!r}") from None
    return runs, temps, seed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a model.pt written by recipes.py --save (an RBM)")
    p.add_argument("settings", nargs="+", metavar="RUNS:TEMPERATURES:SEED")
    p.add_argument("--dataset", default="binarized-mnist")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--label", default="")
    p.add_argument("--bound-chains", type=int, default=1000)
    p.add_argument("--bound-steps", type=int, default=1000)
    args = p.parse_args(argv)
    settings = [parse_setting(s) for s in args.settings]

    import torch

    import data
    import models
    from genzoo.training import flush_denormals
    from models import markov
    from benchmarks.recipes import prepared_folder

    flush_denormals()
    torch.set_num_threads(args.threads)
    model = models.load(args.model)
    if model.name != "rbm":
        raise SystemExit(f"error: {args.model} holds a {model.name}, not an RBM")
    test = data.load(prepared_folder(args.dataset)).tensor("test")
    with torch.no_grad():
        mean_free_energy = model.free_energy(test.to(model.device)).double().mean().item()
    t0 = time.perf_counter()
    bound = model.log_partition_lower_bound(torch.Generator().manual_seed(0), args.bound_chains, args.bound_steps)
    print(f"certain lower bound: log Z >= {bound:.2f}, so the test NLL >= {mean_free_energy + bound:.2f} "
          f"({args.bound_chains} chains x {args.bound_steps} Gibbs steps, {time.perf_counter() - t0:.0f} s)", flush=True)
    out = ROOT / "benchmarks" / "results" / "ais_check.jsonl"
    for runs, temps, seed in settings:
        betas = markov.beta_schedule(temps, model.config.ais_schedule)
        t0 = time.perf_counter()
        log_z, stderr = model.ais_log_partition(runs, betas, torch.Generator().manual_seed(seed))
        row = {"date": dt.date.today().isoformat(), "model": str(args.model), "label": args.label,
               "runs": runs, "temperatures": temps, "schedule": model.config.ais_schedule, "seed": seed,
               "log_z": log_z, "log_z_stderr": stderr, "test_rows": len(test),
               "test_nll": mean_free_energy + log_z, "log_z_lower_bound": bound,
               "test_nll_lower_bound": mean_free_energy + bound, "bound_chains": args.bound_chains,
               "bound_steps": args.bound_steps, "seconds": round(time.perf_counter() - t0, 1),
               "threads": args.threads}
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
