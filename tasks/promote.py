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
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

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


def promote(client, name: str, version: str | int, metrics: dict[str, Any], likelihood_kind: str) -> dict[str, str]:
    """Tag `name`/`version` with its metrics and move the `champion` alias to it if it beats
    the current champion (or there is none yet). Returns dict(decision=..., reason=...)."""
    version = str(version)
    tags = {f"{METRIC_TAG}{k}": repr(float(v)) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    tags[KIND_TAG] = likelihood_kind
    new = primary_metric(likelihood_kind, metrics)
    if new is not None:
        tags[PRIMARY_TAG] = new.name

    current = client.get_registered_model(name).aliases.get(CHAMPION)
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

    for key, value in {**tags, DECISION_TAG: decision, REASON_TAG: reason}.items():
        client.set_model_version_tag(name, version, key, value)
    if decision == CHAMPION and str(current) != version:
        client.set_registered_model_alias(name, CHAMPION, version)
        if current is not None:
            client.set_model_version_tag(name, str(current), SUPERSEDED_TAG, version)
    return {"decision": decision, "reason": reason}
