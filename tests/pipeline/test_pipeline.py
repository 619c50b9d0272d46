"""The real pipeline on tiny data: Prefect (test harness), local Ray, MLflow (temporary SQLite), DVC.

The tests share one project and run in file order: the first run trains and
registers, the later ones build on what it left (a second DVC repro, fetching).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genzoo.cli import main


@pytest.fixture(scope="module")
def first_run(services):
    from flows.pipeline import pipeline

    return pipeline(families=["gan", "vae"], datasets=["ring8", "digits"], preset="smoke")


def client():
    from tasks.services import client as c

    return c()


def test_pipeline_trains_evaluates_and_registers(first_run, project):
    rows = {(r["family"], r["dataset"]): r for r in first_run.rows}
    assert set(rows) == {("gan", "ring8"), ("vae", "ring8"), ("gan", "digits"), ("vae", "digits")}
    assert all(r["status"] == "FINISHED" for r in rows.values()), [r.get("reason") for r in rows.values()]
    # first evaluation: mode statistics on ring8, a likelihood bound where the family has one
    assert 0 <= rows["gan", "ring8"]["modes_captured"] <= 8 and "kl_to_uniform" in rows["gan", "ring8"]
    assert np.isfinite(rows["vae", "digits"]["test_nll"]) and rows["vae", "digits"]["test_bits_per_dim"] > 0
    assert "test_nll" not in rows["gan", "digits"]
    for (fam, ds), r in rows.items():  # the legacy Parzen estimate for every family
        assert np.isfinite(r["parzen_ll"]) and r["parzen_sigma"] > 0
        if ds == "digits":  # image quality on the evaluator's features
            assert r["fid"] >= 0 and 0 <= r["precision"] <= 1 and 0 <= r["coverage"] <= 1 and "kid" in r
            assert r["evaluator_test_accuracy"] > 0.5 and r["metric_samples"] == 200
    # the four trainings ran at the same time on the one Ray cluster
    assert max(r["started_at"] for r in rows.values()) < min(r["ended_at"] for r in rows.values())
    for fam in ("gan", "vae"):  # how the evaluator labels the digits samples
        assert 1 <= rows[fam, "digits"]["classes_hit"] <= 10 and 0.1 <= rows[fam, "digits"]["max_class_share"] <= 1
    report = Path(first_run.report).read_text()
    for fam, ds in rows:
        assert f"| {fam} | {ds} | FINISHED |" in report
    for ds in ("ring8", "digits"):  # each dataset's trivial baseline, measured like the families
        assert f"| trivial baseline (independent marginals) | baseline | {ds} | FINISHED |" in report


def test_report_says_whether_each_model_beats_its_baseline(first_run):
    import json

    table = json.loads((Path(first_run.report).parent / "comparison.json").read_text())
    by = {(r["family"], r["dataset"]): r for r in table["rows"]}
    base = by["baseline", "digits"]
    assert base["test_nll"] > 0 and base["classes_hit"] >= 1 and base["fid"] > 0
    assert by["baseline", "ring8"]["modes_captured"] >= 0
    for (fam, ds), r in by.items():
        if fam == "baseline":
            assert "beats_baseline" not in r
            continue
        if "test_nll" in r:  # the verdict follows the measure: NLL first, then modes, then FID
            expected = r["test_nll"] < by["baseline", ds]["test_nll"]
        elif ds == "ring8":
            b = by["baseline", ds]
            expected = (r["modes_captured"] > b["modes_captured"]) if r["modes_captured"] != b["modes_captured"] \
                else r["high_quality_fraction"] > b["high_quality_fraction"]
        else:
            expected = r["fid"] < by["baseline", ds]["fid"]
        assert r["beats_baseline"] == ("yes" if expected else "NO"), (fam, ds)


def test_mlflow_parent_child_runs_metrics_artifacts_and_registry(first_run, project):
    import data

    c = client()
    parent = c.get_run(first_run.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["preset"] == "smoke"
    assert {a.path for a in c.list_artifacts(parent.info.run_id)} >= {"comparison.md", "comparison.json"}
    children = c.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 6  # four trainings, two baselines
    assert sorted(ch.data.tags["genzoo.family"] for ch in children).count("baseline") == 2
    for child in [ch for ch in children if ch.data.tags["genzoo.family"] != "baseline"]:
        fam, ds = child.data.tags["genzoo.family"], child.data.tags["genzoo.dataset"]
        assert child.info.status == "FINISHED"
        assert child.data.tags["genzoo.data_hash"] == data.load(project / "data" / "prepared" / ds).manifest["hash"]
        assert child.data.params["train.epochs"] == "2" and child.data.params["model.data_kind"]
        history = c.get_metric_history(child.info.run_id, "loss")
        assert [m.step for m in history] == [1, 2]  # one value per epoch
        assert "samples.png" in {a.path for a in c.list_artifacts(child.info.run_id)}
        versions = c.search_model_versions(f"name='{fam}-{ds}'")
        assert len(versions) == 1 and versions[0].run_id == child.info.run_id
        assert versions[0].tags["data_hash"] == child.data.tags["genzoo.data_hash"]
        assert str(c.get_model_version_by_alias(f"{fam}-{ds}", "champion").version) == "1"  # first version: champion


def test_report_html_dvc_metrics_and_regeneration(first_run, project, capsys):
    report = Path(first_run.report)
    page = (report.parent / "comparison.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "FID" in page
    versions = client().search_model_versions("name='evaluator-digits'")
    assert len(versions) == 1 and float(versions[0].tags["test_accuracy"]) > 0.5
    shown = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show"], cwd=project, capture_output=True,
                           text=True, check=True).stdout
    assert "reports/metrics.json" in shown and "gan-ring8" in shown
    report.unlink()
    assert main(["report", first_run.run_name]) == 0
    assert report.read_text().count("| FINISHED |") == 6
    from flows.report import report as report_flow  # the same through the Prefect flow

    report.unlink()
    assert report_flow(run=first_run.parent_run_id) == str(report) and report.is_file()
    assert main(["report", "no-such-run"]) == 2


def test_rerun_reuses_finished_trainings(first_run, project):
    """An interrupted or repeated run recomputes neither data (DVC) nor finished trainings."""
    from flows.pipeline import pipeline

    again = pipeline(families=["gan", "vae"], datasets=["ring8", "digits"], preset="smoke")
    first = {(r["family"], r["dataset"]): r for r in first_run.rows}
    for r in again.rows:
        before = first[r["family"], r["dataset"]]
        assert r["status"] == "FINISHED" and r["reused_from"] == before["run_id"] and r["ray_run"] == ""
        assert r["registered"] == before["registered"]  # not registered a second time
        assert client().get_run(r["run_id"]).data.tags["genzoo.reused_training_from"] == before["run_id"]
    for name in ("gan-ring8", "vae-ring8", "gan-digits", "vae-digits"):
        assert len(client().search_model_versions(f"name='{name}'")) == 1


def test_a_service_error_in_one_training_fails_only_that_row(first_run, project, monkeypatch):
    """A training task hit by an infrastructure error (here the tracking store, injected) ends its own
    MLflow run as FAILED with the reason; the flow finishes the other pairs and reports."""
    from flows.pipeline import pipeline
    from tasks import model as model_module

    real = model_module.train

    def flaky(req, *args, **kwargs):
        if req.family == "gan":
            raise RuntimeError("QueuePool limit reached (injected)")
        return real(req, *args, **kwargs)

    monkeypatch.setattr(model_module, "train", flaky)
    result = pipeline(families=["gan", "vae"], datasets=["ring8"], preset="smoke", register_models=False)
    rows = {r["family"]: r for r in result.rows}
    assert rows["vae"]["status"] == "FINISHED" and rows["vae"]["reused_from"]
    assert rows["gan"]["status"] == "FAILED" and "QueuePool limit reached (injected)" in rows["gan"]["reason"]
    run = client().get_run(rows["gan"]["run_id"])
    assert run.info.status == "FAILED" and "injected" in run.data.tags["genzoo.failure_reason"]
    assert "| gan | ring8 | FAILED |" in Path(result.report).read_text()


def test_fetch_registered_models(first_run, tmp_path):
    import mlflow
    import torch

    import models

    assert main(["fetch", "gan-digits@champion", "-n", "16", "-o", str(tmp_path / "grid.png")]) == 0
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as im:
        assert im.size[0] > 16 and im.size[1] > 16
    row = next(r for r in first_run.rows if (r["family"], r["dataset"]) == ("vae", "ring8"))
    assert main(["fetch", row["registered"], "-n", "7", "--seed", "3", "-o", str(tmp_path / "s.npy")]) == 0
    x = np.load(tmp_path / "s.npy")
    assert x.shape == (7, 2) and np.isfinite(x).all()
    trained = models.load(row["model_path"]).eval()  # the training's own weights file, not the registry's copy
    assert np.array_equal(trained.sample(7, torch.Generator().manual_seed(3)).numpy(), x)  # same seed, same samples
    model = mlflow.pyfunc.load_model(f"models:/{row['registered']}")  # MLflow's own loader still serves it
    assert np.array_equal(model.predict({"n": 7, "seed": 3}), x)
    assert main(["fetch", "gan-nothing", "-n", "4", "-o", str(tmp_path / "x.npy")]) == 2
    assert main(["fetch", "evaluator-digits", "-n", "4", "-o", str(tmp_path / "x.npy")]) == 2  # not a generative model


def test_second_dvc_repro_runs_nothing(first_run, project):
    out = subprocess.run([sys.executable, "-m", "dvc", "repro", "prepare@ring8", "prepare@digits"], cwd=project,
                         capture_output=True, text=True, check=True).stdout
    assert "didn't change, skipping" in out and "Running stage" not in out
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "prepare@ring8", "prepare@digits"], cwd=project, capture_output=True, text=True).stdout
    assert "up to date" in status
    push = subprocess.run([sys.executable, "-m", "dvc", "push"], cwd=project, capture_output=True, text=True)
    assert push.returncode == 0, push.stderr
    assert any((project / ".dvcstore").rglob("*")), "dvc push wrote nothing to the local remote"


def test_failures_are_contained_and_workers_resume(first_run, project):
    """A non-finite loss fails only its own training (MLflow run FAILED with the reason, nothing
    registered); a worker that dies after epoch 1 is restarted by Ray and resumes from the checkpoint."""
    from flows.pipeline import pipeline

    result = pipeline(families=["gan", "vae", "made"], datasets=["ring8"], preset="smoke",
                      model_overrides={"vae": {"lr": 1e30}}, fail_once_at_epoch=1, reuse_trainings=False)
    rows = {r["family"]: r for r in result.rows}
    assert set(rows) == {"gan", "vae"}  # MADE fits binary data only: skipped, with the reason
    assert result.skipped == ["made on ring8: made fits binary data, ring8 is points"]
    assert "made on ring8" in Path(result.report).read_text()
    assert rows["vae"]["status"] == "FAILED" and "non-finite" in rows["vae"]["reason"]
    assert rows["gan"]["status"] == "FINISHED", rows["gan"].get("reason")
    c = client()
    failed = c.get_run(rows["vae"]["run_id"])
    assert failed.info.status == "FAILED" and "non-finite" in failed.data.tags["genzoo.failure_reason"]
    assert len(c.search_model_versions("name='vae-ring8'")) == 1  # nothing new registered
    assert len(c.search_model_versions("name='gan-ring8'")) == 2
    second = c.get_model_version("gan-ring8", "2")
    assert second.tags["genzoo.decision"] in ("champion", "challenger") and second.tags["genzoo.decision_reason"]
    assert rows["gan"]["decision"] == second.tags["genzoo.decision"]
    scratch = project / "ray_results" / "_scratch" / rows["gan"]["ray_run"]
    assert (scratch / "injected-failure").exists()  # the worker did die once ...
    assert [m.step for m in c.get_metric_history(rows["gan"]["run_id"], "loss")] == [1, 2]  # ... and resumed
    assert c.get_run(result.parent_run_id).info.status == "FAILED"


def test_bad_input_exits_2_and_registers_nothing(services, project, tmp_path):
    before = {m.name for m in client().search_registered_models()}
    assert main(["run", "--families", "gan,nope", "--datasets", "ring8", "--preset", "smoke"]) == 2
    assert main(["run", "--datasets", "no-such-set", "--preset", "smoke"]) == 2
    assert main(["run", "--datasets", str(tmp_path / "missing"), "--preset", "smoke"]) == 2
    assert main(["run", "--datasets", "ring8", "--epochs", "0", "--preset", "smoke"]) == 2
    assert main(["run", "--datasets", "ring8", "--batch-size", "-1", "--preset", "smoke"]) == 2
    assert main(["run", "--datasets", "ring8", "--set", "evaluate.n_samplez=10", "--preset", "smoke"]) == 2
    assert main(["run", "--datasets", "ring8", "--set", "evaluate.fid_network=resnet", "--preset", "smoke"]) == 2
    bad = tmp_path / "badvalues.npy"
    x = np.ones((40, 2), dtype=np.float32)
    x[5, 0] = np.nan
    np.save(bad, x)
    assert main(["run", "--families", "gan", "--datasets", str(bad), "--preset", "smoke"]) == 2
    assert not (project / "data" / "prepared" / "badvalues").exists()
    assert {m.name for m in client().search_registered_models()} == before


def test_user_array_dataset_is_named_after_its_file(services, project, tmp_path):
    from flows.pipeline import pipeline

    rng = np.random.default_rng(0)
    arr = tmp_path / "mydata.npy"
    np.save(arr, rng.normal(size=(300, 2)).astype(np.float32))
    result = pipeline(families=["gan"], datasets=[str(arr)], preset="smoke")
    assert result.rows[0]["status"] == "FINISHED" and result.rows[0]["registered"] == "gan-mydata/1"
    assert (project / "data" / "prepared" / "mydata.dvc").is_file()  # tracked by DVC


def test_score_writes_per_example_log_likelihoods(first_run, project, tmp_path, capsys):
    import data

    rows = data.load(project / "data" / "prepared" / "digits").arrays["test"][:30]  # stored levels 0..16
    np.save(tmp_path / "rows.npy", rows)
    assert main(["score", "vae-digits", "--data", str(tmp_path / "rows.npy"), "-o", str(tmp_path / "ll.npy")]) == 0
    ll = np.load(tmp_path / "ll.npy")
    assert ll.shape == (30,) and np.isfinite(ll).all() and (ll < 0).all()
    assert "bound" in capsys.readouterr().out
    assert main(["score", "gan-digits", "--data", str(tmp_path / "rows.npy"), "-o", str(tmp_path / "x.npy")]) == 2
    assert "no likelihood" in capsys.readouterr().err
    np.save(tmp_path / "wrong.npy", np.zeros((4, 5)))
    assert main(["score", "vae-digits", "--data", str(tmp_path / "wrong.npy"), "-o", str(tmp_path / "x.npy")]) == 2
    assert "expects rows of shape (1, 8, 8)" in capsys.readouterr().err


def test_families_lists_every_branch(capsys):
    from models import FAMILIES

    assert main(["families"]) == 0
    out = capsys.readouterr().out
    for name, cls in FAMILIES.items():
        assert name in out and cls.branch in out and cls.likelihood_kind in out
