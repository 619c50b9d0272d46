"""`genzoo reproduce`: the machinery (a table row trained through the real pipeline, our number beside
the published one, nothing registered), on tiny data. The real tables are benchmarks (BENCHMARKS.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path


from genzoo import reproduce
from genzoo.cli import main

TINY_TRAIN = {"epochs": 1, "steps_per_epoch": 3, "batch_size": 32, "val_examples": 50, "cpus_per_worker": 0.5}


def tiny_table() -> reproduce.Table:
    return reproduce.Table(
        name="tiny", dataset="digits", metric="test_nll", unit="nats", lower_is_better=True,
        evaluate={"smoke": {"likelihood_examples": 100}}, about="a tiny table for the test",
        entries=(reproduce.Entry("VAE, tiny", 30.0, None, "a made-up number", "vae",
                                 model={"latent_dim": 4, "hidden": 32}, train={"smoke": TINY_TRAIN}),
                 reproduce.Entry("Reference only", 25.0, 0.5, "another made-up number")))


def test_real_tables_pass_the_pipeline_checks(project):
    for table in reproduce.TABLES.values():
        for budget in reproduce.BUDGETS:
            reproduce.check(table, budget, project)  # raises on an unknown key or impossible setting
    published = {e.label: e.published for e in reproduce.BINARIZED_MNIST.entries}
    assert published["PixelCNN"] == 81.30 and published["VAE, 1 stochastic layer, k=1"] == 86.76


def test_reproduce_row_beside_published_and_not_registered(services, project):
    from tasks.services import client

    table = tiny_table()
    from flows.pipeline import pipeline

    results = reproduce.run(table, "smoke", project, pipeline)
    assert len(results) == 1 and results[0]["status"] == "FINISHED", results
    ours = results[0]["value"]
    assert math.isfinite(ours) and ours > 0
    text = reproduce.render(table, "smoke", results)
    assert f"| VAE, tiny | 30.00 | {ours:.2f}" in text and f"| {ours - 30.0:+.2f} |" in text
    assert "| Reference only | 25.00 ± 0.50 | not in genzoo | - |" in text
    assert "likelihood_examples=100" in text  # the protocol is printed with the numbers
    run = client().get_run(results[0]["run_id"])
    assert "genzoo.registered_model" not in run.data.tags  # a reproduction is no champion candidate
    assert run.data.params["model.latent_dim"] == "4"

    md = reproduce.write(table, "smoke", results, project)
    saved = json.loads(md.with_suffix(".json").read_text())
    assert saved["results"][0]["value"] == ours and saved["published"]["VAE, tiny"] == [30.0, None]

    again = reproduce.run(table, "smoke", project, pipeline)  # the finished training is reused, only evaluated again
    assert client().get_run(again[0]["run_id"]).data.tags.get("genzoo.reused_training_from") == results[0]["run_id"]


def test_reproduce_rejects_an_unknown_table(capsys):
    assert main(["reproduce", "cifar-10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "invalid choice: 'cifar-10'" in err


def test_mode_collapse_table_rows_and_three_metric_rendering():
    """The PacGAN table: GAN, PacGAN2 and PacGAN4 on each dataset, published numbers beside ours for modes,
    high-quality share and KL (rendered from made-up results: training it is a benchmark)."""
    table = reproduce.TABLES["mode-collapse"]
    rows = {e.label: e for e in table.entries}
    for dataset in ("ring8", "grid25"):
        packs = [rows[f"{dataset}: {m}"].settings("cpu")[0]["pack"] for m in ("GAN", "PacGAN2", "PacGAN4")]
        assert packs == [1, 2, 4] and all(table.dataset_of(rows[f"{dataset}: GAN"]) == dataset for _ in packs)
    assert [rows[f"stacked-mnist: {m}"].settings("cpu")[0]["pack"] for m in ("DCGAN", "PacDCGAN2", "PacDCGAN4")] == [1, 2, 4]
    assert rows["ring8: PacGAN2"].published == 7.9 and rows["ring8: PacGAN2"].also == {"high_quality_fraction": 0.956,
                                                                                         "kl_to_uniform": 0.07}
    assert rows["grid25: GAN"].published == 17.3 and rows["stacked-mnist: DCGAN"].also == {"kl_to_uniform": 3.40}
    model, train, _ = rows["ring8: GAN"].settings("cpu")
    results = [{"entry": "ring8: GAN", "family": "gan", "model": model, "train": train, "evaluate": {},
                "status": "FINISHED", "reason": "", "value": 7, "stderr": None,
                "values": {"modes_captured": 7, "high_quality_fraction": 0.5123, "kl_to_uniform": 0.1234}},
               {"entry": "grid25: PacGAN4", "family": "gan", "model": {}, "train": {}, "evaluate": {},
                "status": "FAILED", "reason": "boom", "value": None, "stderr": None, "values": {}}]
    text = reproduce.render(table, "cpu", results)
    assert "| model | modes: published | ours | high quality: published | ours | KL: published | ours |" in text
    assert "| ring8: GAN | 6.3 | 7 | 98.2 % | 51.2 % | 0.45 | 0.12 | gan (" in text and "pack=1" in text
    assert "| grid25: PacGAN4 | 24.8 | - | 93.6 % | - | 0.04 | - | failed: boom |" in text
    assert "| stacked-mnist: PacDCGAN2 | 1000 | - | - | - | 0.06 | - | not run |" in text
    assert "| stacked-mnist: PacDCGAN4 | - | - |" in text  # no published number for packing 4


def test_parzen_cpu_protocol_is_the_papers_whatever_the_load():
    """The cpu Parzen rows draw the protocol's 10,000 samples under the same sampling cap as `full` (a
    2-minute cap cut the GSN's chain short on a loaded machine), and train the GSN for the 1,000 steps its
    grey-image recipe was measured at, the GAN (the paper's MLP players) for the 8,000 of its sweep."""
    table = reproduce.TABLES["parzen-mnist"]
    cpu, full = table.evaluate["cpu"], table.evaluate["full"]
    assert cpu["n_image_samples"] == cpu["parzen_examples"] == 10000
    assert cpu["sample_budget_seconds"] >= full["sample_budget_seconds"]
    rows = {e.label: e for e in table.entries}
    for label, steps in (("Deep GSN", 1000), ("Adversarial nets", 8000)):
        _, train, _ = rows[label].settings("cpu")
        assert train["epochs"] * train["steps_per_epoch"] == steps and train["batch_size"] == 100, (label, train)
    model, _, _ = rows["Adversarial nets"].settings("cpu")
    assert model["players"] == "mlp" and model["hidden"] == 1200 and model["latent_dim"] == 100


def test_protocol_states_the_recipes_train_settings_when_a_row_leaves_them_to_it(tmp_path):
    # The PixelCNN row's cpu budget sets no train values of its own: the report must say what the recipe gave it.
    import shutil

    from genzoo.config import load_params

    root = Path(__file__).resolve().parents[2]
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    folder = tmp_path / "data" / "prepared" / "binarized-mnist"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"shape": [1, 28, 28], "kind": "binary", "levels": 2}))
    entry = next(e for e in reproduce.BINARIZED_MNIST.entries if e.family == "pixelcnn")
    model, train, _ = entry.settings("cpu")
    assert not train  # the row leaves them to the recipe
    resolved = reproduce._resolved_train(tmp_path, "binarized-mnist", "pixelcnn", "cpu", train, model)
    assert resolved == load_params(tmp_path / "params.yaml").resolve("pixelcnn", "binary", "standard").train.to_dict()
    text = reproduce._protocol(entry, {"train": resolved, "model": model, "evaluate": {}}, reproduce.BINARIZED_MNIST)
    assert "None" not in text and f"{resolved['epochs']} epochs x {resolved['steps_per_epoch']} steps" in text
    # ... and what the machine that ran it made of the recipe: the steps its time budget held, the precision it had
    ran = reproduce._protocol(entry, {"train": resolved, "model": model, "evaluate": {}, "train_steps": 1260,
                                      "bfloat16": False}, reproduce.BINARIZED_MNIST)
    assert f"cut to a {resolved['budget_seconds']:g} s budget: 1,260 steps in all" in ran
    assert "float32 (asked bfloat16" in ran and ", bfloat16" not in ran
