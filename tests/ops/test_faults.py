"""Faults inside a real pipeline run (Prefect test harness, local Ray, MLflow, DVC), injected in
process: a training whose worker fails on every attempt exhausts `max_failures` and fails alone; a
crash between registering and promoting leaves a version nobody decided on, which the next run
(here the `train` flow) reuses and promotes; the `retrain` flow then reuses it and decides nothing
again. One faulty pipeline run and two reusing ones, with the smoke budget, on a user dataset of ring8
points (`faults.npy`): its own model names, so these runs share no training or version with other tests
of the session's project."""

from __future__ import annotations

import json

import pytest

from tasks.promote import CHAMPION, DECISION_TAG, REASON_TAG
from tasks.schema import Tag


def client():
    from tasks.services import client as c

    return c()


def versions(name: str) -> list:
    return client().search_model_versions(f"name='{name}'")


@pytest.fixture(scope="module")
def points(tmp_path_factory) -> str:
    """600 ring8 points as a user's .npy: the dataset `faults`."""
    import numpy as np

    from data import sources

    path = tmp_path_factory.mktemp("faults") / "faults.npy"
    np.save(path, sources.ring8(600, seed=3)[0].astype(np.float32))
    return str(path)


@pytest.fixture(scope="module")
def faulty_run(services, points):
    """gan's promotion crashes after its version is registered; vae's worker fails on every attempt."""
    import tasks.promote
    from flows.pipeline import pipeline

    def crash(*args, **kwargs):
        raise RuntimeError("process died between register and promote (injected)")

    before = {name: len(versions(name)) for name in ("gan-faults", "vae-faults")}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(tasks.promote, "promote", crash)
        m.setenv("GENZOO_FAULT", json.dumps({"family": "vae", "fail_every_attempt": True}))
        result = pipeline(families=["gan", "vae"], datasets=[points], preset="smoke", reuse_trainings=False)
    return result, before


def test_exhausted_retries_fail_that_training_alone(faulty_run, project):
    result, before = faulty_run
    rows = {r.family: r for r in result.rows}
    vae = rows["vae"]
    assert vae.status == "FAILED"
    assert "on attempt 3 of 3 (train.max_failures=2)" in vae.reason, vae.reason
    assert "injected worker failure (every attempt)" in vae.reason
    run = client().get_run(vae.run_id)
    assert run.info.status == "FAILED" and "attempt 3 of 3" in run.data.tags[Tag.FAILURE]
    assert len(versions("vae-faults")) == before["vae-faults"]  # nothing registered
    attempts = (project / "ray_results" / "_scratch" / vae.ray_run / "attempts").read_text().splitlines()
    assert len(attempts) == 3  # Ray ran it 1 + max_failures times
    assert rows["gan"].train_seconds > 0 and rows["gan"].reused_from is None  # the other row trained on


def test_a_crash_between_register_and_promote_leaves_an_undecided_version(faulty_run):
    result, before = faulty_run
    gan = {r.family: r for r in result.rows}["gan"]
    assert gan.status == "FAILED" and "process died between register and promote" in gan.reason
    assert len(versions("gan-faults")) == before["gan-faults"] + 1
    tags = client().get_run(gan.run_id).data.tags
    name, version = tags[Tag.REGISTERED].split("/")  # registered, then the crash
    assert tags[Tag.TRAINED] == "1" and name == "gan-faults"
    assert DECISION_TAG not in client().get_model_version(name, version).tags
    children = client().search_runs([client().get_run(gan.run_id).info.experiment_id],
                                    f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert children and all(ch.info.status != "RUNNING" for ch in children)


def test_the_train_flow_reuses_the_training_and_promotes_it(faulty_run, points):
    from flows.train import train as train_flow

    result, before = faulty_run
    crashed = {r.family: r for r in result.rows}["gan"]
    registered = client().get_run(crashed.run_id).data.tags[Tag.REGISTERED]
    again = train_flow(family="gan", dataset=points, preset="smoke")
    row, = again.rows
    assert row.status == "FINISHED", row.reason
    assert row.reused_from == crashed.run_id and row.registered == registered  # no new version
    assert len(versions("gan-faults")) == before["gan-faults"] + 1
    name, version = registered.split("/")
    tags = client().get_model_version(name, version).tags
    assert tags[DECISION_TAG] == row.decision and tags[REASON_TAG] == row.decision_reason
    champion = str(client().get_registered_model(name).aliases.get(CHAMPION))
    assert (champion == version) == (row.decision == CHAMPION)


def test_the_retrain_flow_reuses_and_decides_nothing_again(faulty_run, points):
    from flows.retrain import retrain

    result, before = faulty_run
    registered = client().get_run({r.family: r for r in result.rows}["gan"].run_id).data.tags[Tag.REGISTERED]
    name, version = registered.split("/")
    decided = client().get_model_version(name, version).tags
    again = retrain(families=["gan"], datasets=[points], preset="smoke")
    row, = again.rows
    assert row.status == "FINISHED" and row.reused_from and row.registered == registered
    assert client().get_model_version(name, version).tags[REASON_TAG] == decided[REASON_TAG]
    assert len(versions("gan-faults")) == before["gan-faults"] + 1
