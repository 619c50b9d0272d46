"""Typed run configuration: `params.yaml` sections map one-to-one onto these classes.

- `prepare.<dataset>`  -> keyword parameters of data.prepare (checked there)
- `evaluators.<dataset>` -> the evaluator stage (data/evaluator_stage.py, checked there)
- `train.<preset>`     -> TrainConfig (budgets: smoke, quick, standard, full)
- `models.<family>`    -> the family's Config class (models/<family>.py): defaults for any data
- `recipes.<family>.<data kind>` -> the measured recipe of a family on one kind of data
                          (`model` and `train` settings, and per-budget ones under the budget's
                          name); see `Params.resolve` for the order in which they apply
- `evaluate`           -> EvalConfig
- `uses.<task>.<method>` -> the method's Config (genzoo/uses/): keys common to every budget, refined
                          under each budget's name (`Params.use_settings`)
Unknown keys are rejected with a message that names them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from models.base import ConfigError, _coerce, reject_unknown_keys

Preset = Literal["smoke", "quick", "standard", "full"]  # the training budgets (params.yaml `train`)
PRESETS: tuple[str, ...] = get_args(Preset)
# Kinds of data a recipe is written for (`recipe_kind` says which one a dataset is).
RECIPE_KINDS = ("points", "binary", "small_image", "grey_image", "color_image")
SCHEDULES = ("constant", "cosine", "step")
PRECISIONS = ("fp32", "bf16")  # train.precision: float32 throughout, or the training step autocast to bfloat16
FID_NETWORKS = ("evaluator", "inception")  # evaluate.fid_network: the dataset's own CNN (default), or also Inception-v3
MAX_SEED = 2 ** 32 - 1  # numpy's seeds are 0..2**32-1


def check_seed(key: str, value: int) -> None:
    """Seeds reach numpy (and torch): 0..MAX_SEED, else a sentence naming the key."""
    if not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{key} must be a seed from 0 to {MAX_SEED}, got {value}")


@dataclasses.dataclass
class _Strict:
    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, _coerce(field.name, getattr(self, field.name), field.type))

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "") -> "_Strict":
        reject_unknown_keys(cls, values, where or None)
        return cls(**(values or {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class TrainConfig(_Strict):
    epochs: int = 5
    batch_size: int = 128  # global batch, split over workers
    steps_per_epoch: int = 0  # 0: one full pass over the training split
    num_workers: int = 1  # Ray Train workers (data-parallel)
    use_gpu: str = "auto"  # 'auto' (when the cluster has GPUs), 'true' or 'false'
    cpus_per_worker: float = 1.0
    max_failures: int = 2  # worker failures survived by resuming from the last checkpoint
    seed: int = 0
    val_examples: int = 500  # validation likelihood per epoch on this many examples (0: none)
    # -- the optimisation recipe (genzoo/training.py) --
    schedule: str = "constant"  # learning rate over the run: constant, cosine (to min_lr_ratio) or step
    warmup_steps: int = 0  # linear warm-up from 0 over this many steps
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of the initial one
    step_every: int = 1  # step: epochs between two decays...
    step_gamma: float = 0.5  # ... by this factor
    patience: int = 0  # early stopping: epochs without a better validation NLL (0: never stop early)
    restore_best: bool = True  # likelihood families keep the weights of the best validation NLL
    ema: float = 0.0  # decay of an exponential moving average of the weights sampled from (0: off)
    clip_grad: float = 0.0  # max global gradient norm per optimiser step (0: no clipping)
    init_from_data: bool = True  # output/visible biases start at the logit of the training mean
    # 'bf16': the training step's forward pass autocast to bfloat16 (weights, optimiser, gradients' accumulation
    # and every evaluation stay float32); on a CPU only where it has native bfloat16 (AVX512-BF16 or AMX), else fp32
    precision: str = "fp32"
    # a wall-time budget of the optimisation steps (0: none): after the first steps' timing, steps_per_epoch (or the
    # full pass) shrinks to what fits, so a budget holds on slower machines too; the run logs the steps it used
    budget_seconds: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.use_gpu, bool):
            self.use_gpu = str(self.use_gpu).lower()
        super().__post_init__()
        for key in ("epochs", "batch_size", "num_workers"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"train.{key} must be positive, got {getattr(self, key)}")
        if self.steps_per_epoch < 0 or self.val_examples < 0 or self.max_failures < 0:
            raise ConfigError("train.steps_per_epoch, val_examples and max_failures must not be negative")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"train.cpus_per_worker must be positive, got {self.cpus_per_worker}")
        if self.use_gpu not in ("auto", "true", "false"):
            raise ConfigError(f"train.use_gpu must be auto, true or false, got {self.use_gpu!r}")
        if self.batch_size < self.num_workers:
            raise ConfigError(f"train.batch_size {self.batch_size} is smaller than num_workers {self.num_workers}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_steps < 0 or self.patience < 0 or self.step_every < 1:
            raise ConfigError("train.warmup_steps and patience must not be negative, train.step_every must be positive")
        if not 0 <= self.min_lr_ratio <= 1 or not 0 < self.step_gamma <= 1:
            raise ConfigError("train.min_lr_ratio must be in [0, 1] and train.step_gamma in (0, 1]")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"train.ema must be in [0, 1), got {self.ema}")
        if self.clip_grad < 0:
            raise ConfigError(f"train.clip_grad must not be negative, got {self.clip_grad}")
        if self.budget_seconds < 0:
            raise ConfigError(f"train.budget_seconds must not be negative, got {self.budget_seconds}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check_seed("train.seed", self.seed)


@dataclasses.dataclass
class EvalConfig(_Strict):
    n_samples: int = 2500  # samples of 2-D data drawn for the mode statistics and the scatter
    n_image_samples: int = 1000  # samples of image data for FID & co. (10,000 in the papers)
    n_mode_samples: int = 26000  # samples drawn on Stacked MNIST to count its 1,000 modes (PacGAN/VEEGAN)
    sample_budget_seconds: float = 120.0  # stop drawing image samples after this long (min. 64): O(pixels) samplers
    likelihood_examples: int = 2000  # test examples (a seeded random subset) for the likelihood (0: whole test split)
    parzen_examples: int = 1000  # validation rows to choose sigma, test rows to score
    real_examples: int = 2000  # test images whose features stand for the data in FID & co.
    seed: int = 1234
    fid_network: str = "evaluator"  # 'inception': also an Inception-v3 FID (genzoo/evaluation/inception.py)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fid_network not in FID_NETWORKS:
            raise ConfigError(f"evaluate.fid_network must be {' or '.join(FID_NETWORKS)}, got {self.fid_network!r}")
        for key in ("n_samples", "n_image_samples", "n_mode_samples", "parzen_examples", "real_examples",
                    "sample_budget_seconds"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"evaluate.{key} must be positive, got {getattr(self, key)}")
        if self.likelihood_examples < 0:
            raise ConfigError("evaluate.likelihood_examples must not be negative")
        check_seed("evaluate.seed", self.seed)


def recipe_kind(shape: list[int] | tuple[int, ...], kind: str) -> str:
    """The kind of data a recipe is written for: points (real vectors), binary, or images by size and
    channels (small: at most 16x16, like the 8x8 digits; grey: one channel; colour: three)."""
    if kind == "binary":
        return "binary"
    if len(shape) != 3:
        return "points"
    channels, height, width = shape
    if channels == 1 and height * width <= 16 * 16:
        return "small_image"
    return "grey_image" if channels == 1 else "color_image"


@dataclasses.dataclass
class Recipe:
    """What a run of one family on one dataset trains with, and where each part came from."""

    name: str  # e.g. 'gan/points/quick': family, recipe kind, budget
    model: dict[str, Any]  # family config values (without data_shape/data_kind)
    train: TrainConfig


@dataclasses.dataclass
class Params:
    """The whole of params.yaml, checked."""

    datasets: list[str]
    prepare: dict[str, dict]
    evaluators: dict[str, dict]  # checked by genzoo.evaluator_stage
    train: dict[str, TrainConfig]
    models: dict[str, dict]
    evaluate: EvalConfig
    recipes: dict[str, dict[str, dict]] = dataclasses.field(default_factory=dict)  # family -> kind -> entry
    uses: dict[str, dict[str, dict]] = dataclasses.field(default_factory=dict)  # task -> method -> entry

    def train_config(self, preset: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
        if preset not in self.train:
            raise ConfigError(f"unknown preset '{preset}' (known: {', '.join(self.train)})")
        return TrainConfig.from_dict({**self.train[preset].to_dict(), **(overrides or {})}, f"train.{preset}")

    def resolve(self, family: str, kind: str, preset: str, train_overrides: dict[str, Any] | None = None,
                model_overrides: dict[str, Any] | None = None) -> Recipe:
        """The settings of `family` on data of recipe kind `kind` under budget `preset`. Later wins:
        train.<preset> < recipes.<family>.<kind>.train < recipes.<family>.<kind>.<preset>.train < --set train.*,
        models.<family> < recipes.<family>.<kind>.model < ....<preset>.model < --set <family>.*."""
        if preset not in self.train:
            raise ConfigError(f"unknown preset '{preset}' (known: {', '.join(self.train)})")
        entry = self.recipes.get(family, {}).get(kind, {})
        budget = entry.get(preset, {})
        model = {**self.models.get(family, {}), **entry.get("model", {}), **budget.get("model", {}),
                 **(model_overrides or {})}
        train = {**self.train[preset].to_dict(), **entry.get("train", {}), **budget.get("train", {}),
                 **(train_overrides or {})}
        name = f"{family}/{kind if entry else 'default'}/{preset}"
        return Recipe(name, model, TrainConfig.from_dict(train, f"the {name} recipe's train settings"))


    def use_settings(self, task: str, method: str, preset: str, overrides: dict[str, Any] | None = None):
        """The Config of `method` of `task` under budget `preset`: uses.<task>.<method> common keys <
        its <preset> keys < overrides (--set <method>.*), checked by the method's Config class."""
        from genzoo.uses import get_use

        if preset not in self.train:
            raise ConfigError(f"unknown preset '{preset}' (known: {', '.join(self.train)})")
        entry = dict(self.uses.get(task, {}).get(method) or {})
        budget = entry.get(preset) or {}
        common = {k: v for k, v in entry.items() if k not in PRESETS}
        cls = get_use(task).method(method).Config
        return cls.from_dict({**common, **budget, **(overrides or {})}, f"uses.{task}.{method} ({preset})")


def _check_recipes(raw: dict, path: Path, families: dict) -> dict[str, dict[str, dict]]:
    """recipes.<family>.<kind>: {model: {...}, train: {...}, <preset>: {model: {...}, train: {...}}}, every key
    known (family config fields, TrainConfig fields)."""
    out: dict[str, dict[str, dict]] = {}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    for family, kinds in (raw or {}).items():
        if family not in families:
            raise ConfigError(f"unknown family '{family}' in the recipes section of {path}")
        model_keys = {f.name for f in dataclasses.fields(families[family].Config)} - {"data_shape", "data_kind"}
        for kind, entry in (kinds or {}).items():
            where = f"recipes.{family}.{kind} in {path}"
            if kind not in RECIPE_KINDS:
                raise ConfigError(f"unknown data kind '{kind}' in {where} (known: {', '.join(RECIPE_KINDS)})")
            parts = [("", entry or {})] + [(f".{p}", (entry or {}).get(p) or {}) for p in PRESETS]
            for prefix, part in parts:
                allowed = {"model", "train"} | (set(PRESETS) if not prefix else set())
                for key, values in part.items():
                    if key not in allowed:
                        raise ConfigError(f"unknown key '{key}' in {where}{prefix} (known: {', '.join(sorted(allowed))})")
                    if key in PRESETS:
                        continue
                    known = model_keys if key == "model" else train_keys
                    bad = sorted(set(values or {}) - known)
                    if bad:
                        raise ConfigError(f"unknown {key} key '{bad[0]}' in {where}{prefix}")
            out.setdefault(family, {})[kind] = entry or {}
    return out


def load_params(path: str | Path) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run genzoo from the project folder (where dvc.yaml and params.yaml are) or set GENZOO_PROJECT_DIR")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({exc})") from None
    known = {"datasets", "prepare", "evaluators", "train", "models", "recipes", "evaluate", "uses"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown section '{unknown[0]}' in {path} (known: {', '.join(sorted(known))})")
    from models import FAMILIES  # the family registry decides which model sections exist

    models = raw.get("models") or {}
    for family in models:
        if family not in FAMILIES:
            raise ConfigError(f"unknown family '{family}' in the models section of {path}")
    return Params(
        datasets=list(raw.get("datasets") or []),
        prepare=dict(raw.get("prepare") or {}),
        evaluators=dict(raw.get("evaluators") or {}),
        train={k: TrainConfig.from_dict(v, f"train.{k}") for k, v in (raw.get("train") or {}).items()},
        models={k: dict(v or {}) for k, v in models.items()},
        evaluate=EvalConfig.from_dict(raw.get("evaluate") or {}, "evaluate"),
        recipes=_check_recipes(raw.get("recipes") or {}, path, FAMILIES),
        uses=_check_uses(raw.get("uses") or {}, path),
    )


def _check_uses(raw: dict, path: Path) -> dict[str, dict[str, dict]]:
    """uses.<task>.<method>: a known task and method (genzoo/uses/); its keys are checked by the
    method's Config when a run resolves them (Params.use_settings)."""
    from genzoo.uses import MODULES

    for task, methods in raw.items():
        if task not in MODULES:
            raise ConfigError(f"unknown task '{task}' in the uses section of {path} (known: {', '.join(MODULES)})")
        if not isinstance(methods, dict) or not all(isinstance(v, dict) for v in methods.values()):
            raise ConfigError(f"uses.{task} in {path} must map each method to its settings")
    return {task: dict(methods) for task, methods in raw.items()}


# ---------------------------------------------------------------------- --set overrides
EXPECTED = {  # how a --set value of each annotated type is written, for the error sentence
    "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
    "tuple[int, ...]": "a list of integers such as [64,64]", "tuple[float, ...]": "a list of numbers such as [0.5,1]",
}
NOT_SETTABLE = ("data_shape", "data_kind")  # a family's data fields come from the dataset's manifest


@dataclasses.dataclass(frozen=True)
class Overrides:
    """`--set` items parsed against the typed configs: train.*, evaluate.* and <family>.* values."""

    train: dict[str, Any]
    evaluate: dict[str, Any]
    models: dict[str, dict[str, Any]]


def parse_overrides(items: list[str]) -> Overrides:
    """SECTION.KEY=VALUE items -> typed values: `vae.lr=1e-3` is the float 0.001, `train.epochs=[` a
    ConfigError sentence naming the key and the type it expects, an unknown section or key named."""
    out = Overrides({}, {}, {})
    for item in items:
        key, sep, text = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(f"--set expects SECTION.KEY=VALUE (e.g. train.epochs=3, evaluate.seed=1 or "
                              f"vae.lr=0.001), got '{item}'")
        annotation = _override_fields(section, item).get(name)
        if annotation is None:
            known = ", ".join(sorted(_override_fields(section, item)))
            raise ConfigError(f"--set {item}: unknown key '{name}' for {section} (known keys: {known})")
        value = parse_value(text, annotation, f"--set {item}: {section}.{name}")
        target = {"train": out.train, "evaluate": out.evaluate}.get(section)
        (target if target is not None else out.models.setdefault(section, {}))[name] = value
    return out


def parse_use_overrides(task: str, items: list[str]) -> dict[str, dict[str, Any]]:
    """`--set METHOD.KEY=VALUE` items of `genzoo apply TASK`, read as the method's Config types:
    method -> {key: value}; an unknown method (or a refused family: the reason), key or bad value named."""
    from genzoo.uses import get_use

    use = get_use(task)
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise ConfigError(f"--set expects METHOD.KEY=VALUE (e.g. {next(iter(use.methods))}.seed=1), got '{item}'")
        fields = {f.name: str(f.type) for f in dataclasses.fields(use.method(method).Config)}
        if name not in fields:
            raise ConfigError(f"--set {item}: unknown key '{name}' for {task} {method} (known keys: {', '.join(sorted(fields))})")
        out.setdefault(method, {})[name] = parse_value(text, fields[name], f"--set {item}: {method}.{name}")
    return out


def _override_fields(section: str, item: str) -> dict[str, str]:
    """The settable fields of a --set section and their annotations."""
    from models import FAMILIES

    if section == "train":
        cls = TrainConfig
    elif section == "evaluate":
        cls = EvalConfig
    elif section in FAMILIES:
        cls = FAMILIES[section].Config
    else:
        raise ConfigError(f"--set {item}: unknown section '{section}' (train, evaluate or a family: "
                          f"{', '.join(FAMILIES)})")
    return {f.name: str(f.type) for f in dataclasses.fields(cls) if f.name not in NOT_SETTABLE}


def parse_value(text: str, annotation: str, where: str) -> Any:
    """One --set value read as its field's type; `where` starts the error sentence."""
    expected = EXPECTED.get(annotation, f"a {annotation}")
    bad = ConfigError(f"{where} expects {expected}, got '{text}'")
    value = text.strip()
    if annotation == "int":
        if not value.lstrip("+-").isdigit() or value.count("-") + value.count("+") > 1:
            raise bad
        return int(value)
    if annotation == "float":
        try:
            number = float(value)
        except ValueError:
            raise bad from None
        if not math.isfinite(number):
            raise ConfigError(f"{where} expects a finite number, got '{text}'")
        return number
    if annotation == "bool":
        if value.lower() not in ("true", "false"):
            raise bad
        return value.lower() == "true"
    if annotation == "str":
        return value
    try:  # lists and anything else: YAML, checked by the config class afterwards
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise bad from None
