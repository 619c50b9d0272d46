"""A racing promoter for test_consistency.py, in its own small module: a spawned process imports
only this, tasks.promote and MLflow (not pytest or the test module)."""

from __future__ import annotations


def promote_rounds(uri: str, rounds: list[tuple[str, str, float]], barrier, results) -> None:
    """For each round: wait for the other promoter, then promote this side's version."""
    from mlflow import MlflowClient

    from tasks.promote import promote

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name, version, nll in rounds:
        barrier.wait()
        results.put((name, version, promote(client, name, version, {"test_nll": nll}, "bound")["decision"]))
