"""`genzoo apply TASK` for real at the smoke budget: Prefect (test harness), local Ray, MLflow
(temporary SQLite), DVC, on the first 600 rows of each MNIST split (the session project's data).
What each method computes is tested in tests/uses/; here: the flow's runs, registration, reuse,
report, and refusals."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from genzoo.cli import main
from genzoo.uses import TASKS, get_use

# the dataset each task's smoke run uses (inpaint: every image family is a method on binary digits)
DATASET = {"semi-supervised": "mnist", "inpaint": "binarized-mnist", "super-resolve": "mnist", "translate": "mnist"}


def client():
    from tasks.services import client as c

    return c()


@pytest.fixture(scope="module")
def applied(services):
    from flows.apply import apply

    return {task: apply(task=task, dataset=DATASET[task], preset="smoke") for task in TASKS}


@pytest.mark.parametrize("task", TASKS)
def test_each_task_runs_every_method_and_registers_its_predictors(applied, task, project):
    result = applied[task]
    use = get_use(task)
    expected = [m for m, spec in use.methods.items() if DATASET[task] in spec.datasets]
    assert [r.method for r in result.rows] == expected
    assert not result.failed, [(r.method, r.reason) for r in result.failed]
    c = client()
    for row in result.rows:
        run = c.get_run(row.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == result.parent_run_id
        logged = {k[len("use."):]: v for k, v in run.data.metrics.items() if k.startswith("use.")}
        assert logged == pytest.approx(row.metrics) and logged, row.method
        if row.registered:
            name, version = row.registered.split("/")
            assert name == f"{task}-{row.method}-{DATASET[task]}"
            assert c.get_model_version(name, version).run_id == row.run_id
    text = (project / "reports" / f"{task}.md").read_text()
    for row in result.rows:
        assert f"| {row.method} |" in text
    assert (project / "reports" / "uses.md").read_text().count("# ") >= len(TASKS)


def test_a_registered_predictor_is_served_from_the_registry(applied):
    """What a user fetches: the semi-supervised GAN's classifier from MLflow, labels for test images."""
    import data

    row = next(r for r in applied["semi-supervised"].rows if r.method == "gan")
    name, version = row.registered.split("/")
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    from genzoo.env import configure

    images = data.load(configure() / "data" / "prepared" / "mnist").arrays["test"][:8]
    labels = np.asarray(model.predict(images / 255.0))
    assert labels.shape == (8,) and set(labels.tolist()) <= set(range(10))


def test_a_family_model_is_trained_once_then_reused(applied, services):
    """inpaint's family methods train the family with the pipeline's train step in a nested run; a
    second apply run reuses that training (same key) instead of training again."""
    from flows.apply import apply

    family = next(m for m, spec in get_use("inpaint").methods.items() if spec.family)
    first = next(r for r in applied["inpaint"].rows if r.method == family)
    c = client()
    nested = c.search_runs([c.get_run(first.run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{first.run_id}'")
    assert len(nested) == 1 and nested[0].data.tags["genzoo.trained"] == "1"
    again = apply(task="inpaint", methods=[family], dataset="binarized-mnist", preset="smoke", register_models=False)
    assert not again.failed and again.rows[0].registered is None
    nested2 = c.search_runs([nested[0].info.experiment_id], f"tags.mlflow.parentRunId = '{again.rows[0].run_id}'")
    assert nested2[0].data.tags.get("genzoo.reused_training_from") in {nested[0].info.run_id,
                                                                       nested[0].data.tags.get("genzoo.reused_training_from")}


@pytest.mark.parametrize("args, sentence", [
    (["semi-supervised", "--methods", "made"], "made cannot do semi-supervised: "),
    (["translate", "--methods", "vae"], "vae cannot do translate: "),
    (["semi-supervised", "--methods", "nosuch"], "unknown method 'nosuch' for semi-supervised"),
    (["semi-supervised", "--dataset", "ring8"], "does not do semi-supervised on ring8"),
    (["super-resolve", "--set", "mse.nosuch=1"], "unknown key 'nosuch' for super-resolve mse"),
    (["semi-supervised", "--methods", "gan", "--set", "gan.lr=fast"], "gan.lr expects a number, got 'fast'"),
])
def test_bad_input_is_refused_with_one_sentence_and_exit_2(project, capsys, args, sentence):
    runs = client().search_runs([e.experiment_id for e in client().search_experiments()]) if project else []
    assert main(["apply", *args, "--preset", "smoke"]) == 2
    err = capsys.readouterr().err
    assert sentence in err and err.count("\n") == 1
    after = client().search_runs([e.experiment_id for e in client().search_experiments()])
    assert len(after) == len(runs)  # nothing started or written
