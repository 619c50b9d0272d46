"""The `retrain` flow: the scheduled (weekly, see prefect.yaml) refresh of the registered models.

It is the `pipeline` flow (as a subflow), which already does what a retraining needs:
1. its prepare step runs `dvc repro prepare@<dataset>`, so every dataset is brought to
   its current data version first; a stage reruns only when its code (data/*.py) or
   its params.yaml section changed, otherwise DVC skips it and the data stays as it was;
2. every family is trained, evaluated and registered as a new version of
   `<family>-<dataset>`;
3. the register step promotes (tasks/promote.py): the new version takes the alias
   `champion` only when it beats the current champion on the family's primary metric
   (test NLL, else modes captured then KL, else FID), otherwise it is tagged a
   challenger with the reason.
NOTE: DVC tracks the code and params of the prepare stages, not the raw download
folders: replacing a raw file alone does not make `dvc repro` re-prepare it.
"""

# NOTE: no `from __future__ import annotations`: `flow.serve()` ships the flow function by value,
# without the module globals a string annotation (e.g. 'Preset') would need to be resolved.

from genzoo.config import Preset
from prefect import flow

from tasks.schema import PipelineResult
from flows.pipeline import DEFAULT_DATASETS, DEFAULT_FAMILIES, ON_EXIT, outcome, pipeline


@flow(name="retrain", **ON_EXIT)
def retrain(
    families: list[str] = DEFAULT_FAMILIES,
    datasets: list[str] = DEFAULT_DATASETS,
    preset: Preset = "quick",
) -> PipelineResult:
    """Re-prepare the data through DVC, retrain `families` on `datasets`, register and promote."""
    return outcome(pipeline(families=families, datasets=datasets, preset=preset, return_state=True))
