"""Data preparation under DVC: built-in datasets are `dvc repro prepare@<name>` stages,
user files are prepared the same way and tracked with `dvc add`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from prefect import task

import data
from data.errors import DataError
from genzoo.config import load_params
from tasks.progress import say

PREPARED = Path("data") / "prepared"
EVALUATORS = Path("data") / "evaluators"


def evaluator_dir(root: Path, name: str) -> Path | None:
    """The trained evaluator of an image dataset (a DVC output), if it has one."""
    folder = Path(root) / EVALUATORS / name
    return folder if (folder / "evaluator.pt").is_file() else None


def dvc(root: Path, *args: str, lock_wait_seconds: float = 1800) -> str:
    """Run the DVC CLI of this interpreter in the project; a failure becomes a DataError naming the cause.
    Another pipeline run holding DVC's repository lock, or writing an output this one needs (DVC's
    read-write lock, e.g. two runs preparing MNIST at once), is waited for (it is transient), not an error."""
    deadline, waited = time.monotonic() + lock_wait_seconds, False
    while True:
        proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
        text = proc.stdout + proc.stderr
        # Another run holds the repository lock, or (read-write lock) is writing an output this repro reads.
        if proc.returncode == 0 or not any(m in text for m in ("Unable to acquire lock", "is being blocked by")):
            break
        if time.monotonic() > deadline:
            raise DataError(f"another process has held DVC's lock in {root} for over {lock_wait_seconds:.0f} s")
        if not waited:
            say(f"{'data':<20} waiting for another run's DVC stage in {root} (dvc {' '.join(args)})")
            waited = True
        time.sleep(2)
    if proc.returncode != 0:
        ours = [line for line in text.splitlines() if line.startswith("error: ")]
        raise DataError(ours[-1][len("error: "):] if ours else f"dvc {' '.join(args)} failed: {text.strip()[-2000:]}")
    return proc.stdout


@task(name="prepare", retries=0)
def prepare_datasets(specs: list[str], root: str) -> dict[str, str]:
    """Bring every dataset to its current data version; returns name -> prepared folder.

    `dvc repro` only reruns a stage whose code, params or outputs changed, so a
    second pipeline run prepares nothing again.
    """
    root_path = Path(root)
    params = load_params(root_path / "params.yaml")
    builtin = [s for s in specs if data.is_builtin(s)]
    missing = [s for s in builtin if s not in params.datasets]
    if missing:
        raise DataError(f"dataset {missing[0]} is not in the datasets list of params.yaml, so dvc.yaml has no stage for it")
    out: dict[str, str] = {}
    if builtin:
        stages = [f"prepare@{s}" for s in builtin] + [f"evaluator@{s}" for s in builtin if s in params.evaluators]
        say(f"{'data':<20} dvc repro {' '.join(stages)}")
        output = dvc(root_path, "repro", *stages)
        log = root_path / "logs" / "dvc.log"  # the stages' whole output; the terminal gets their results
        log.parent.mkdir(exist_ok=True)
        with open(log, "a") as f:
            f.write(output)
        for line in output.splitlines():
            if line.startswith(("prepared ", "evaluator ")):
                say(f"{'data':<20} {line}")
        out.update({s: str(root_path / PREPARED / s) for s in builtin})
    for spec in specs:
        if data.is_builtin(spec):
            continue
        name = data.dataset_name(spec)
        target = root_path / PREPARED / name
        data.prepare(spec, target, {}, root_path / "data" / "raw")
        dvc(root_path, "add", str(target.relative_to(root_path)))
        out[name] = str(target)
    return out
