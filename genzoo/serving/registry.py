"""Registered genzoo models loaded through the installed genzoo code: nothing stored in the registry runs.

A registered version is an MLflow pyfunc "from code" (genzoo/serving/sampler.py stored beside the
weights, tasks/register.py). `mlflow.pyfunc.load_model` imports that stored file, so whoever can
write the registry's artifact store could run code on the next load. `load()` instead resolves
NAME / NAME@ALIAS / NAME/VERSION to a model version, downloads only its MLmodel file (read as plain
YAML) and its weights file, and builds the model from the installed families with
`torch.load(..., weights_only=True)` (models.load): a tampered sampler.py is never imported, and
a weights file holding anything but tensors and plain values is refused by torch.

NOTE: `mlflow models serve` and `mlflow.pyfunc.load_model` still import the stored sampler.py;
they trust whoever writes the registry (README, "Reliability and security").
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np

from models.base import ConfigError

# The pyfunc artifact names tasks/register.py logs: a genzoo sampler's weights, an evaluator's folder.
WEIGHTS_ARTIFACT = "weights"
EVALUATOR_ARTIFACT = "evaluator"
MAX_SAMPLES = 100_000  # a bound on one request (`fetch -n`, serving): drawn and held in memory at once


class RegistryError(ConfigError):
    """A reference that names no loadable genzoo model, or a request it cannot answer; a ConfigError,
    so the CLI prints it as one sentence with exit status 2."""


# Registered model names, aliases (and pipeline run names) reach MLflow filter strings ("name='...'"):
# plain characters only, so nothing a user types can change a filter.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ALIAS_RE = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclasses.dataclass(frozen=True)
class Reference:
    """NAME, NAME@ALIAS or NAME/VERSION (a `models:/` prefix is accepted); a bare NAME is its latest version."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, ref: str) -> Reference:
        """The reference, checked: a plain name and alias, a numeric version."""
        text = ref.removeprefix("models:/")
        name, alias = text.split("@", 1) if "@" in text else (text, None)
        name, version = name.split("/", 1) if "/" in name and alias is None else (name, None)
        if not NAME_RE.match(name):
            raise RegistryError(f"model name '{name}' in '{ref}' is not a registered model name "
                                f"(letters, digits, '-', '_', '.'; e.g. gan-mnist)")
        if alias is not None and not ALIAS_RE.match(alias):
            raise RegistryError(f"alias '{alias}' in '{ref}' is not a model alias (letters, digits, '-', '_'; "
                                f"e.g. champion)")
        if version is not None and not version.isdigit():
            raise RegistryError(f"model version must be a number, got '{version}' in '{ref}'")
        return cls(name, alias=alias, version=version)


@dataclasses.dataclass(frozen=True)
class RegisteredModel:
    """A registered version and the genzoo model built from its weights."""

    name: str
    version: str
    model: object  # models.GenerativeModel, in eval mode

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def sample(self, n: int, seed: int) -> np.ndarray:
        return draw(self.model, n, seed)


def draw(model, n: int, seed: int) -> np.ndarray:
    """n samples for `seed`: what `genzoo fetch` writes and the pyfunc's predict returns."""
    import torch

    if not 0 < n <= MAX_SAMPLES:
        raise RegistryError(f"the number of samples must be from 1 to {MAX_SAMPLES:,}, got {n}")
    return model.sample(n, torch.Generator().manual_seed(seed)).numpy()


def resolve(client, ref: str):
    """The MLflow ModelVersion that `ref` names."""
    from mlflow.exceptions import MlflowException

    r = Reference.parse(ref)
    try:
        if r.alias is not None:
            return client.get_model_version_by_alias(r.name, r.alias)
        if r.version is not None:
            return client.get_model_version(r.name, r.version)
        versions = client.search_model_versions(f"name='{r.name}'")  # a checked name: no quotes
    except MlflowException as exc:  # unknown name, version or alias
        raise RegistryError(f"cannot find {ref} in {client.tracking_uri}: {str(exc).splitlines()[0]}") from None
    if not versions:
        raise RegistryError(f"no registered model named '{r.name}' in {client.tracking_uri}")
    return max(versions, key=lambda v: int(v.version))


def load(client, ref: str) -> RegisteredModel:
    """The genzoo model registered as `ref`, built by the installed code from its weights alone."""
    import yaml

    import models

    version = resolve(client, ref)
    label = f"{version.name}/{version.version}"
    location = client.get_model_version_download_uri(version.name, version.version)  # the model's artifact folder
    with tempfile.TemporaryDirectory(prefix="genzoo-fetch-") as tmp:
        mlmodel = _download(location, "MLmodel", tmp, client, label)
        try:
            spec = yaml.safe_load(Path(mlmodel).read_text()) or {}  # safe_load: plain data, no objects
        except yaml.YAMLError as exc:
            raise RegistryError(f"{label}'s MLmodel file is not readable YAML ({str(exc).splitlines()[0]})") from None
        artifacts = _mapping(_mapping(_mapping(spec).get("flavors")).get("python_function")).get("artifacts")
        artifacts = _mapping(artifacts)
        if EVALUATOR_ARTIFACT in artifacts:
            raise RegistryError(f"{label} is an evaluator network (it labels images for the metrics), "
                                f"not a generative model: fetch and score take a model such as gan-mnist")
        if WEIGHTS_ARTIFACT not in artifacts:
            raise RegistryError(f"{label} is not a genzoo model: its MLmodel names no '{WEIGHTS_ARTIFACT}' artifact")
        weights = _download(location, _relative(_mapping(artifacts[WEIGHTS_ARTIFACT]).get("path"), label), tmp, client, label)
        try:
            model = models.load(weights)  # torch.load(weights_only=True), families from the installed code
        except ConfigError as exc:
            raise RegistryError(f"{label}'s weights do not build an installed genzoo model: {exc}") from None
        except Exception as exc:  # torch's UnpicklingError for anything but tensors and plain values
            raise RegistryError(f"{label}'s weights file is not a genzoo weights-only file "
                                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    model.eval()
    return RegisteredModel(version.name, str(version.version), model)


def _mapping(value: object) -> dict:
    """A section of the MLmodel file, or {} where a tampered or foreign file has something else."""
    return value if isinstance(value, dict) else {}


def _relative(path: object, label: str) -> str:
    """A path inside the model's artifacts: nothing absolute, nothing above it."""
    p = PurePosixPath(str(path or ""))
    if not path or p.is_absolute() or ".." in p.parts:
        raise RegistryError(f"{label}'s MLmodel gives the weights as {path!r}, not a path inside the model")
    return str(p)


def _download(location: str, path: str, dst: str, client, label: str) -> str:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=f"{location.rstrip('/')}/{path}", dst_path=dst,
                                                   tracking_uri=client.tracking_uri)
    except (MlflowException, OSError) as exc:
        raise RegistryError(f"cannot download {path} of {label}: {str(exc).splitlines()[0]}") from None
