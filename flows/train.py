"""The `train` flow: one family on one dataset, i.e. the `pipeline` flow (as a subflow) with one pair.

It is the deployment to pick in the Prefect UI for a single model: the form asks
for a family, a dataset and a budget, and the result is registered as
`<family>-<dataset>` (and promoted to `@champion` when it beats the current one).
"""

# NOTE: no `from __future__ import annotations`: `flow.serve()` ships the flow function by value,
# without the module globals a string annotation (e.g. 'Preset') would need to be resolved.

from genzoo.config import Preset
from prefect import flow

from tasks.schema import PipelineResult
from flows.pipeline import ON_EXIT, outcome, pipeline


@flow(name="train", **ON_EXIT)
def train(family: str, dataset: str, preset: Preset = "quick") -> PipelineResult:
    """Train, evaluate and register `family` on `dataset` with the `preset` budget."""
    return outcome(pipeline(families=[family], datasets=[dataset], preset=preset, return_state=True))
