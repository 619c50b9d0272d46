"""Champion/challenger promotion in the MLflow model registry.

Every registered `<family>-<dataset>` has at most one version with the alias
`champion` (load it as `models:/NAME@champion`, or `genzoo fetch NAME@champion`).
A new version takes the alias only when it beats the current champion on the
family's primary metric (`primary_metric`); otherwise it stays a challenger.
Either way the version is tagged with its metrics (`metric.<name>`) and the
decision with its reason (`genzoo.decision`, `genzoo.decision_reason`), so a
later comparison reads the champion's tags and needs no run lookups.

The functions take an `MlflowClient`, so they are tested against a plain SQLite
store without Prefect or Ray; the pipeline's register step calls `promote`.

Concurrency (two pipelines registering one model name at once): the decision is taken under a
per-model lock (`model_lock`: an exclusive `flock` on <lock folder>/<name>.lock), and the champion
is read inside it, so promotions of one name are serialised and each compares with the champion
the previous one left. What is guaranteed:
- every process that promotes with the same lock folder, on one machine (the default folder is
  the project's .genzoo/locks, beside its SQLite store) or on machines that share it over a file
  system with working `flock` (set GENZOO_LOCK_DIR, e.g. on the NFS folder of GENZOO_RAY_STORAGE):
  the better version always ends as champion and the decision tags say how it got there;
- promoters that share a tracking server but not a lock folder: MLflow has no compare-and-set on
  aliases, so after moving the alias each promoter reads it back and, when another version holds it
  by then, decides again against that one (at most VERIFY_ROUNDS times). That narrows the race to
  the moment between another writer's alias write and its read-back; it does not close it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator, NamedTuple

CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG = "metric."
DECISION_TAG = "genzoo.decision"
REASON_TAG = "genzoo.decision_reason"
PRIMARY_TAG = "genzoo.primary_metric"
KIND_TAG = "genzoo.likelihood_kind"
SUPERSEDED_TAG = "genzoo.superseded_by"
DATA_TAG = "data_hash"  # set by the register task: the DVC data version the metrics were measured on

NO_METRIC = "no comparable metric"
LOCK_DIR_ENV = "GENZOO_LOCK_DIR"
VERIFY_ROUNDS = 3


def lock_dir() -> Path:
    """GENZOO_LOCK_DIR, else <project>/.genzoo/locks (GENZOO_PROJECT_DIR, else the current folder)."""
    folder = os.environ.get(LOCK_DIR_ENV) or Path(os.environ.get("GENZOO_PROJECT_DIR") or os.getcwd()) / ".genzoo" / "locks"
    return Path(folder)


@contextlib.contextmanager
def model_lock(name: str, folder: Path | None = None) -> Iterator[None]:
    """Exclusive lock of registered model `name` across threads and processes: `flock` belongs to an
    open file, so every holder opens its own; the kernel drops it when a holder dies."""
    folder = Path(folder or lock_dir())
    folder.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    with open(folder / f"{safe}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Primary(NamedTuple):
    """The metric a version is judged by. `value` is a float, or for mode coverage the pair
    (modes_captured, kl_to_uniform): more modes win, ties go to the lower KL."""

    name: str
    value: float | tuple[float, float]
    higher_is_better: bool

    def score(self) -> tuple[float, ...]:
        """Larger is better, whatever the metric."""
        if isinstance(self.value, tuple):
            modes, kl = self.value
            return (modes, -kl)
        return (self.value if self.higher_is_better else -self.value,)

    def describe(self) -> str:
        if isinstance(self.value, tuple):
            return f"{self.value[0]:g} modes (KL to uniform {self.value[1]:.4g})"
        return f"{self.name} {self.value:.6g}"

    def rule(self) -> str:
        if isinstance(self.value, tuple):
            return "more modes, then lower KL, is better"
        return f"{'higher' if self.higher_is_better else 'lower'} is better"


def _finite(metrics: dict[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return None
    try:
        v = float(v)  # tags come back as strings
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def primary_metric(likelihood_kind: str, metrics: dict[str, Any]) -> Primary | None:
    """The family's test likelihood where it has one ('test_nll', lower is better); else mode
    coverage on ring8/grid25 ('modes_captured' higher is better, ties by 'kl_to_uniform' lower);
    else 'fid' (lower is better); else None: nothing to compare."""
    nll = _finite(metrics, "test_nll")
    if likelihood_kind != "none" and nll is not None:
        return Primary("test_nll", nll, False)
    modes, kl = _finite(metrics, "modes_captured"), _finite(metrics, "kl_to_uniform")
    if modes is not None and kl is not None:
        return Primary("modes_captured", (modes, kl), True)
    fid = _finite(metrics, "fid")
    if fid is not None:
        return Primary("fid", fid, False)
    return None


def stored_metrics(tags: dict[str, str]) -> dict[str, str]:
    """The `metric.<name>` tags of a model version, without the prefix."""
    return {k[len(METRIC_TAG):]: v for k, v in tags.items() if k.startswith(METRIC_TAG)}


def promote(client, name: str, version: str | int, metrics: dict[str, Any], likelihood_kind: str,
            lock_folder: Path | None = None) -> dict[str, str]:
    """Tag `name`/`version` with its metrics and move the `champion` alias to it if it beats
    the current champion (or there is none yet), under `model_lock(name)`.
    Returns dict(decision=..., reason=...)."""
    version = str(version)
    tags = {f"{METRIC_TAG}{k}": repr(float(v)) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    tags[KIND_TAG] = likelihood_kind
    new = primary_metric(likelihood_kind, metrics)
    if new is not None:
        tags[PRIMARY_TAG] = new.name
    with model_lock(name, lock_folder):
        for _ in range(VERIFY_ROUNDS):
            current = client.get_registered_model(name).aliases.get(CHAMPION)  # read inside the lock
            decision, reason = _decide(client, name, version, current, new, likelihood_kind)
            for key, value in {**tags, DECISION_TAG: decision, REASON_TAG: reason}.items():
                client.set_model_version_tag(name, version, key, value)
            if decision != CHAMPION or str(current) == version:
                break
            client.set_registered_model_alias(name, CHAMPION, version)
            if current is not None:
                client.set_model_version_tag(name, str(current), SUPERSEDED_TAG, version)
            if str(client.get_registered_model(name).aliases.get(CHAMPION)) == version:
                break  # read back: no promoter outside this lock moved it meanwhile
    return {"decision": decision, "reason": reason}


def decision_of(client, name: str, version: str | int) -> dict[str, str] | None:
    """The decision recorded on a version, or None when it was never promoted (a crash between
    registering and promoting)."""
    tags = client.get_model_version(name, str(version)).tags
    if DECISION_TAG not in tags:
        return None
    return {"decision": tags[DECISION_TAG], "reason": tags.get(REASON_TAG, "")}


def _decide(client, name: str, version: str, current, new: Primary | None, likelihood_kind: str) -> tuple[str, str]:
    """Champion or challenger against the champion `current` (None: there is none yet), and why."""
    if current is None:
        decision, reason = CHAMPION, f"first champion of {name}" + ("" if new else f" ({NO_METRIC})")
    elif str(current) == version:
        decision, reason = CHAMPION, "already the champion"
    elif new is None:
        decision, reason = CHALLENGER, NO_METRIC
    else:
        champ = client.get_model_version(name, str(current))
        old = primary_metric(champ.tags.get(KIND_TAG, likelihood_kind), stored_metrics(champ.tags))
        data_new, data_old = client.get_model_version(name, version).tags.get(DATA_TAG), champ.tags.get(DATA_TAG)
        if data_new and data_old and data_new != data_old:
            # NOTE: test metrics on two data versions are not comparable; the champion stays until a
            # person moves the alias (or the champion is re-evaluated on the new data).
            decision, reason = CHALLENGER, (f"{NO_METRIC}: champion v{current} was evaluated on data {data_old}, "
                                            f"this version on data {data_new}")
        elif old is None or old.name != new.name:
            decision, reason = CHALLENGER, f"{NO_METRIC}: champion v{current} has no stored {new.name}"
        else:
            beats = new.score() > old.score()  # a tie keeps the champion
            decision = CHAMPION if beats else CHALLENGER
            verb = "beats" if beats else "does not beat"
            reason = f"{new.describe()} {verb} champion v{current}'s {old.describe()} ({new.rule()})"
    return decision, reason
