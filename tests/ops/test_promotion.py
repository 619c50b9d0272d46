"""Champion/challenger promotion (tasks/promote.py) against a temporary SQLite MLflow registry.

No Prefect, Ray or training: versions are registered straight from a dummy artifact
folder, and the metrics are the ones the evaluate task would have reported.
"""

from __future__ import annotations

import pytest

from tasks.promote import CHAMPION, primary_metric, promote


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """One store for the module (creating its tables costs seconds); each test uses its own model names."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture()
def register(client, tmp_path):
    """register(name) -> the new version (a string), its source a dummy folder."""
    source = tmp_path / "artifact"
    source.mkdir()
    (source / "MLmodel").write_text("dummy\n")

    def new_version(name: str, data_hash: str | None = None) -> str:
        if not client.search_registered_models(f"name='{name}'"):
            client.create_registered_model(name)
        tags = {"data_hash": data_hash} if data_hash else None  # as the register task tags them
        return str(client.create_model_version(name, source=str(source), tags=tags).version)

    return new_version


def champion(client, name: str) -> str | None:
    v = client.get_registered_model(name).aliases.get(CHAMPION)
    return None if v is None else str(v)


def tags(client, name: str, version: str) -> dict[str, str]:
    return client.get_model_version(name, version).tags


def test_primary_metric_follows_the_likelihood_kind():
    assert primary_metric("bound", {"test_nll": 1.5, "modes_captured": 8, "kl_to_uniform": 0.1}) == ("test_nll", 1.5, False)
    assert primary_metric("none", {"test_nll": 1.5, "modes_captured": 8, "kl_to_uniform": 0.1}) == \
        ("modes_captured", (8.0, 0.1), True)  # an implicit model has no likelihood, whatever a dict says
    assert primary_metric("exact", {"modes_captured": 7, "kl_to_uniform": 0.2}) == ("modes_captured", (7.0, 0.2), True)
    assert primary_metric("none", {"fid": 12.0, "likelihood_kind": "none"}) == ("fid", 12.0, False)
    assert primary_metric("none", {"likelihood_kind": "none", "samples_per_second": 10.0}) is None
    assert primary_metric("exact", {"test_nll": float("nan")}) is None  # a NaN compares with nothing


def test_first_version_becomes_champion_worse_stays_challenger_better_takes_the_alias(client, register):
    name = "vae-ring8"
    v1 = register(name)
    out = promote(client, name, v1, {"test_nll": 2.0, "test_nll_stderr": 0.1, "likelihood_kind": "bound"}, "bound")
    assert out["decision"] == "champion" and "first" in out["reason"]
    assert champion(client, name) == v1
    t1 = tags(client, name, v1)
    assert t1["metric.test_nll"] == "2.0" and t1["metric.test_nll_stderr"] == "0.1"
    assert "metric.likelihood_kind" not in t1 and t1["genzoo.likelihood_kind"] == "bound"
    assert t1["genzoo.decision"] == "champion" and t1["genzoo.primary_metric"] == "test_nll"

    v2 = register(name)  # worse (higher NLL): keeps no alias, tagged challenger with the reason
    out = promote(client, name, v2, {"test_nll": 2.5}, "bound")
    assert out["decision"] == "challenger"
    assert champion(client, name) == v1
    t2 = tags(client, name, v2)
    assert t2["genzoo.decision"] == "challenger" and t2["genzoo.decision_reason"] == out["reason"]
    assert "does not beat champion v1" in out["reason"] and "lower is better" in out["reason"]

    v3 = register(name)  # equal is not better
    assert promote(client, name, v3, {"test_nll": 2.0}, "bound")["decision"] == "challenger"

    v4 = register(name)  # better: takes the alias, the old champion is marked as superseded
    out = promote(client, name, v4, {"test_nll": 1.5}, "bound")
    assert out["decision"] == "champion" and "beats champion v1" in out["reason"]
    assert champion(client, name) == v4
    assert tags(client, name, v1)["genzoo.superseded_by"] == v4

    v5 = register(name)  # compared with the new champion's stored tags, not with v1
    assert promote(client, name, v5, {"test_nll": 1.8}, "bound")["decision"] == "challenger"
    assert champion(client, name) == v4


def test_implicit_models_compare_modes_then_kl(client, register):
    name = "gan-ring8"
    v1 = register(name)
    assert promote(client, name, v1, {"modes_captured": 6, "kl_to_uniform": 0.30, "likelihood_kind": "none"},
                   "none")["decision"] == "champion"
    v2 = register(name)  # fewer modes, even with a lower KL: worse
    out = promote(client, name, v2, {"modes_captured": 5, "kl_to_uniform": 0.01}, "none")
    assert out["decision"] == "challenger" and "5 modes" in out["reason"] and "6 modes" in out["reason"]
    v3 = register(name)  # same modes, lower KL: better
    assert promote(client, name, v3, {"modes_captured": 6, "kl_to_uniform": 0.10}, "none")["decision"] == "champion"
    v4 = register(name)  # same modes, higher KL: worse
    assert promote(client, name, v4, {"modes_captured": 6, "kl_to_uniform": 0.20}, "none")["decision"] == "challenger"
    v5 = register(name)  # more modes wins whatever the KL
    assert promote(client, name, v5, {"modes_captured": 8, "kl_to_uniform": 0.90}, "none")["decision"] == "champion"
    assert champion(client, name) == v5
    assert tags(client, name, v5)["genzoo.primary_metric"] == "modes_captured"


def test_without_a_comparable_metric_the_first_is_champion_and_the_rest_challengers(client, register):
    name = "gan-digits"
    v1 = register(name)
    first = promote(client, name, v1, {"likelihood_kind": "none", "samples_per_second": 100.0}, "none")
    assert first["decision"] == "champion" and "no comparable metric" in first["reason"]
    v2 = register(name)
    assert promote(client, name, v2, {"samples_per_second": 500.0}, "none") == {
        "decision": "challenger", "reason": "no comparable metric"}
    assert champion(client, name) == v1
    # once measured, a version is still not compared with a champion that never was
    v3 = register(name)
    out = promote(client, name, v3, {"fid": 3.0}, "none")
    assert out["decision"] == "challenger" and "champion v1 has no stored fid" in out["reason"]


def test_fid_lower_is_better_and_promoting_twice_changes_nothing(client, register):
    name = "gan-mnist"
    v1, v2 = register(name), register(name)
    promote(client, name, v1, {"fid": 40.0}, "none")
    assert promote(client, name, v2, {"fid": 25.0}, "none")["decision"] == "champion"
    assert promote(client, name, v2, {"fid": 25.0}, "none") == {"decision": "champion", "reason": "already the champion"}
    assert champion(client, name) == v2


def test_metrics_on_another_data_version_are_not_compared(client, register):
    name = "vae-digits"
    v1 = register(name, data_hash="aaaa")
    promote(client, name, v1, {"test_nll": 50.0}, "bound")
    v2 = register(name, data_hash="bbbb")  # a far better NLL, but on other test data
    out = promote(client, name, v2, {"test_nll": 10.0}, "bound")
    assert out["decision"] == "challenger" and "data aaaa" in out["reason"] and "data bbbb" in out["reason"]
    v3 = register(name, data_hash="aaaa")
    assert promote(client, name, v3, {"test_nll": 40.0}, "bound")["decision"] == "champion"
