"""A throw-away copy of a genzoo project (tests, benchmarks): its own DVC, MLflow and Prefect state."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def new_project(root: Path, params_update: dict | None = None) -> Path:
    """Copy dvc.yaml, params.yaml (updated section by section) and the code the prepare stages
    depend on into `root`, and make it a DVC project (no git) with a local remote."""
    root = Path(root)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    for package in ("data", "genzoo"):  # the code files dvc.yaml stages depend on
        for f in (REPO / package).rglob("*.py"):
            target = root / f.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, target)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in (params_update or {}).items():
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(params[section].get(key), dict):
                params[section][key].update(value)
            else:
                params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=root, check=True)
    subprocess.run([*dvc, "config", "core.analytics", "false"], cwd=root, check=True)
    subprocess.run([*dvc, "remote", "add", "-d", "local", str(root / ".dvcstore")], cwd=root, check=True)
    return root
