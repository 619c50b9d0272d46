"""One setting of a semi-supervised method on the prepared MNIST, called directly (no pipeline): the
epoch lines and the test error. The GAN's recipe sweep in BENCHMARKS.md ran this, one setting a call:

    .venv/bin/python benchmarks/semisup_sweep.py '{"lr": 0.001, "epochs": 3, "init_noise": true}'

The JSON object holds the method's settings (params.yaml `uses.semi-supervised.<method>` keys); "method"
picks gan (default), vae or baseline. The GAN's start from the paper's lr 0.003, beta1 0.5, batch 100 and
3 epochs, the others' from their config's defaults.
Needs data/prepared/mnist (`genzoo prepare mnist`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data import prepared  # noqa: E402
from genzoo.uses import get_use  # noqa: E402
from genzoo.uses.base import UseInputs  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    changes = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    method = get_use("semi-supervised").method(changes.pop("method", "gan"))
    start_from = {"lr": 0.003, "beta1": 0.5, "batch_size": 100, "epochs": 3} if method.name == "gan" else {}
    config = method.Config.from_dict({**start_from, **changes})
    start = time.perf_counter()
    outcome = method.run(UseInputs("semi-supervised", method.name, "mnist", prepared.load(ROOT / "data/prepared/mnist"),
                                   config, torch.device("cpu"), log=lambda line: print(line, flush=True)))
    print("RESULT", json.dumps(changes), {k: round(v, 2) for k, v in outcome.metrics.items()},
          f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
