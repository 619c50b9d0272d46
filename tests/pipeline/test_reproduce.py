"""`genzoo reproduce`: the machinery (a table row trained through the real pipeline, our number beside
the published one, nothing registered), on tiny data. The real tables are benchmarks (BENCHMARKS.md)."""

from __future__ import annotations

import json
import math

import pytest

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
    results = reproduce.run(table, "smoke", project)
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

    again = reproduce.run(table, "smoke", project)  # the finished training is reused, only evaluated again
    assert client().get_run(again[0]["run_id"]).data.tags.get("genzoo.reused_training_from") == results[0]["run_id"]


def test_reproduce_rejects_an_unknown_table(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "cifar-10"])
    assert exc.value.code == 2 and "invalid choice: 'cifar-10'" in capsys.readouterr().err
