"""The `genzoo` command.

    genzoo run --families gan,vae --datasets ring8,digits --preset smoke|quick|full
    genzoo fetch NAME[@ALIAS|/VERSION] -n N -o FILE(.npy|.png)
    genzoo score NAME[@ALIAS|/VERSION] --data FILE.npy -o OUT.npy
    genzoo report [RUN]
    genzoo reproduce binarized-mnist|parzen-mnist|mode-collapse [--budget cpu|full]
    genzoo apply semi-supervised|inpaint|super-resolve|translate [--methods ...] [--dataset D] [--preset P]
    genzoo families
    genzoo prepare DATASET          (what each DVC prepare stage runs)

Bad input exits with status 2 and one sentence naming the problem.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from genzoo.env import configure

EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, with its errors in genzoo's form: one line `error: ...` and exit status 2 (no usage block)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _overrides(items: list[str]) -> tuple[dict, dict, dict]:
    """--set train.epochs=3 / evaluate.n_image_samples=10000 / vae.lr=0.001, each read as its field's
    type (genzoo/config.py: parse_overrides) -> (train overrides, evaluate overrides, model overrides)."""
    from genzoo.config import parse_overrides

    parsed = parse_overrides(items)
    return parsed.train, parsed.evaluate, parsed.models


def cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import DEFAULT_DATASETS, DEFAULT_FAMILIES, pipeline
    from models import FAMILIES

    families = _csv(args.families) if args.families else DEFAULT_FAMILIES
    if families == ["all"]:
        families = list(FAMILIES)
    datasets = _csv(args.datasets) if args.datasets else DEFAULT_DATASETS
    train_over, eval_over, model_over = _overrides(args.set or [])
    for key in ("epochs", "num_workers", "batch_size"):
        if getattr(args, key) is not None:
            train_over[key] = getattr(args, key)
    if args.use_gpu:
        train_over["use_gpu"] = args.use_gpu
    from tasks.plan import PipelineRequest, check_cluster, plan

    root = configure()
    checked = plan(PipelineRequest(families, datasets, args.preset, train_over, model_over, eval_over), root)  # fail fast
    from genzoo import startup

    startup.warm_up()  # Prefect's API server and Ray start side by side
    check_cluster(checked)  # a RAY_ADDRESS cluster's resources are known only now: before any training
    result = pipeline(families=families, datasets=datasets, preset=args.preset, train_overrides=train_over or None,
                      model_overrides=model_over or None, register_models=not args.no_register,
                      reuse_trainings=not args.retrain, evaluate_overrides=eval_over or None)
    print("\n" + Path(result.report).read_text())
    print(f"report: {result.report} (and {Path(result.report).with_suffix('.html').name}); logs: {startup.log_dir()}")
    return 1 if result.failed else 0


def cmd_apply(args: argparse.Namespace) -> int:
    from genzoo.config import parse_use_overrides
    from genzoo.uses import DEFAULT_DATASET
    from tasks.apply import ApplyRequest, default_methods, plan_apply

    root = configure()
    dataset = args.dataset or DEFAULT_DATASET[args.task]
    methods = _csv(args.methods) if args.methods else default_methods(args.task, dataset)
    overrides = parse_use_overrides(args.task, args.set or [])
    plan_apply(ApplyRequest(args.task, methods, dataset, args.preset, overrides or None), root)  # fail fast
    from genzoo import startup

    startup.warm_up()
    from flows.apply import apply

    result = apply(task=args.task, methods=methods, dataset=dataset, preset=args.preset, overrides=overrides or None,
                   register_models=not args.no_register, reuse_trainings=not args.retrain)
    print("\n" + Path(result.report).read_text())
    print(f"report: {result.report} (and {Path(result.report).with_suffix('.html').name}); logs: {startup.log_dir()}")
    return 1 if result.failed else 0


def check_model_ref(ref: str) -> None:
    """NAME, NAME@ALIAS or NAME/VERSION with a plain name and alias (genzoo.serving.registry.Reference),
    checked before any model is loaded."""
    from genzoo.serving.registry import Reference

    Reference.parse(ref)


def check_seed(seed: int) -> None:
    from genzoo.config import MAX_SEED  # numpy's seed range

    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be from 0 to {MAX_SEED}, got {seed}")


def check_output(out: Path, suffixes: tuple[str, ...]) -> Path:
    """The output file's suffix, and that its folder is (or can be made) writable: checked before any
    model is loaded. Nothing is left behind by the check."""
    if out.suffix not in suffixes:
        raise UsageError(f"output file must end in {' or '.join(suffixes)}, got '{out}'")
    if out.is_dir():
        raise UsageError(f"output {out} is a folder; give a file name ending in {' or '.join(suffixes)}")
    folder = out.absolute().parent
    while not folder.exists():
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
        with tempfile.TemporaryFile(dir=folder):  # the real test of writability (os.access ignores mounts)
            pass
    except OSError as exc:
        raise UsageError(f"cannot write output {out}: folder {folder} is not writable ({exc.strerror or exc})") from None
    return out


def write_output(out: Path, write) -> None:
    """Create the output's folder and call write(); an OSError is a sentence naming the file."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write()
    except OSError as exc:
        raise UsageError(f"cannot write output {out}: {exc.strerror or exc}") from None


def cmd_fetch(args: argparse.Namespace) -> int:
    import numpy as np

    from genzoo.serving.registry import MAX_SAMPLES

    if not 0 < args.n <= MAX_SAMPLES:
        raise UsageError(f"-n must be from 1 to {MAX_SAMPLES:,}, got {args.n}")
    check_seed(args.seed)
    check_model_ref(args.name)
    out = check_output(Path(args.output), (".npy", ".png"))
    registered = load_registered(args.name)
    x = registered.sample(args.n, args.seed)
    if out.suffix == ".npy":
        write_output(out, lambda: np.save(out, x))
    else:
        from genzoo.plots import save_samples

        try:
            write_output(out, lambda: save_samples(x, out, title=args.name))
        except ValueError as exc:
            raise UsageError(f"{exc}; write .npy instead") from None
    print(f"wrote {args.n} samples of shape {tuple(x.shape[1:])} from {registered.uri} to {out}")
    return 0


def load_registered(ref: str):
    """The genzoo model registered as NAME, NAME@ALIAS or NAME/VERSION, built by the installed genzoo
    code from its weights alone (genzoo.serving.registry: nothing stored in the registry runs)."""
    from genzoo.serving import registry
    from tasks.services import client

    return registry.load(client(), ref)  # a RegistryError (a ConfigError) is one sentence, exit 2


def cmd_score(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from data.errors import DataError
    from data.prepared import rows_for_model
    from genzoo.training import log_likelihoods

    check_seed(args.seed)
    check_model_ref(args.name)
    out = check_output(Path(args.output), (".npy",))
    data_path = Path(args.data)
    if not data_path.is_file():
        raise DataError(f"data file {data_path} does not exist")
    if data_path.suffix != ".npy":
        raise DataError(f"data file {data_path} must be a .npy array")
    from data import user

    user.check_values(user.inspect(data_path, min_rows=1))  # readable, numeric, bounded, finite: before any model loads
    registered = load_registered(args.name)
    model, uri = registered.model, registered.uri
    if model.likelihood_kind == "none":
        raise UsageError(f"{args.name} is a {model.name} model, an implicit model with no likelihood: nothing to score")
    try:
        x = np.load(data_path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{data_path} is not a readable .npy array ({exc})") from None
    c = model.config
    rows = rows_for_model(x, c.data_shape, c.data_kind, c.levels, str(data_path))
    torch.manual_seed(args.seed)
    ll = log_likelihoods(model, rows).numpy()
    write_output(out, lambda: np.save(out, ll))
    method = model.likelihood_method or model.likelihood_kind
    print(f"wrote {len(ll)} per-example log-likelihoods in nats ({model.likelihood_kind}: {method}) "
          f"from {uri} to {out}; mean {ll.mean():.3f} nats")
    return 0


def cmd_families(args: argparse.Namespace) -> int:
    from models import FAMILIES

    print(f"{'family':10} {'likelihood':10} {'method':24} {'fits':20} branch")
    for name, cls in FAMILIES.items():
        print(f"{name:10} {cls.likelihood_kind:10} {cls.likelihood_method or '-':24} "
              f"{','.join(cls.supported_kinds):20} {cls.branch}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    import data
    from genzoo.config import load_params

    root = configure()
    name = data.dataset_name(args.dataset)
    params = load_params(root / "params.yaml").prepare.get(name, {})
    manifest = data.prepare(args.dataset, root / "data" / "prepared" / name, params, root / "data" / "raw", args.data_dir)
    print(f"prepared {manifest['name']}: {manifest['splits']} of shape {manifest['shape']} (data hash {manifest['hash']})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tasks.report import find_pipeline_run, write_report

    from genzoo.serving.registry import NAME_RE  # a run name reaches an MLflow filter string too

    root = configure()
    if args.run is not None and not NAME_RE.match(args.run):
        raise UsageError(f"'{args.run}' is not a pipeline run name or id (letters, digits, '-', '_', '.')")
    try:
        run_id = find_pipeline_run(args.run)
    except LookupError as exc:
        raise UsageError(str(exc)) from None
    from tasks.apply import UseTag
    from tasks.services import client

    if UseTag.TASK in client().get_run(run_id).data.tags:  # an apply run: its task's table
        from tasks.apply_report import write_report as write_apply_report

        path = write_apply_report(run_id, root / "reports")
    else:
        path = write_report(run_id, root / "reports")
    print(f"report: {path} (and {path.with_suffix('.html')})")
    return 0


def cmd_evaluator(args: argparse.Namespace) -> int:
    from data import evaluator_stage
    from genzoo.config import load_params

    root = configure()
    params = load_params(root / "params.yaml").evaluators
    if args.dataset not in params:
        raise UsageError(f"no evaluator is configured for '{args.dataset}' (params.yaml evaluators: {', '.join(params)})")
    m = evaluator_stage.build(args.dataset, root, params[args.dataset])
    print(f"evaluator {args.dataset}: test accuracy {m['test_accuracy']:.4f} ({m['train_seconds']:.0f} s)")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from genzoo import reproduce

    root = configure()
    table = reproduce.TABLES[args.table]
    from flows.pipeline import pipeline

    results = reproduce.run(table, args.budget, root, pipeline, retrain=args.retrain, rows=_csv(args.rows) if args.rows else None)
    if args.rows:  # the other rows keep their last written results
        results = reproduce.merge_previous(table, args.budget, results, root)
    path = reproduce.write(table, args.budget, results, root)
    print(reproduce.render(table, args.budget, results))
    print(f"written to {path} (and {path.with_suffix('.json')})")
    return 0 if all(r["status"] == "FINISHED" for r in results) else 1


def build_parser() -> argparse.ArgumentParser:
    from genzoo.config import PRESETS

    p = Parser(prog="genzoo", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the pipeline flow: prepare, train on Ray, evaluate, register, report")
    r.add_argument("--families", help="comma-separated families, or 'all' (default: gan,vae)")
    r.add_argument("--datasets", help="comma-separated dataset names or paths (default: ring8,grid25,digits,mnist)")
    r.add_argument("--preset", choices=PRESETS, default="quick")
    r.add_argument("--epochs", type=int)
    r.add_argument("--batch-size", type=int)
    r.add_argument("--num-workers", type=int, help="Ray Train workers per training (data-parallel)")
    r.add_argument("--use-gpu", choices=["auto", "true", "false"])
    r.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override train.*, evaluate.* or <family>.* settings")
    r.add_argument("--no-register", action="store_true", help="train and evaluate, but register nothing")
    r.add_argument("--retrain", action="store_true",
                   help="train again even where an identical training (same data version and config) finished")
    r.set_defaults(func=cmd_run)

    f = sub.add_parser("fetch", help="sample from a registered model")
    f.add_argument("name", help="NAME, NAME@ALIAS or NAME/VERSION, e.g. gan-mnist")
    f.add_argument("-n", type=int, default=16)
    f.add_argument("-o", "--output", required=True, help="FILE.npy (array) or FILE.png (grid or scatter)")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=cmd_fetch)

    sc = sub.add_parser("score", help="per-example log-likelihood (nats) of a user's rows under a registered model")
    sc.add_argument("name", help="NAME, NAME@ALIAS or NAME/VERSION")
    sc.add_argument("--data", required=True, help="FILE.npy with rows shaped like the model's data")
    sc.add_argument("-o", "--output", required=True, help="OUT.npy")
    sc.add_argument("--seed", type=int, default=0, help="seed of stochastic bounds/estimates")
    sc.set_defaults(func=cmd_score)

    sub.add_parser("families", help="list the families").set_defaults(func=cmd_families)

    pr = sub.add_parser("prepare", help="prepare one dataset (the DVC stage command)")
    pr.add_argument("dataset")
    pr.add_argument("--data-dir", help="folder with the raw files (default: GENZOO_DATA_DIR, then data/raw)")
    pr.set_defaults(func=cmd_prepare)
    rp = sub.add_parser("report", help="rebuild the comparison report of a pipeline run from MLflow")
    rp.add_argument("run", nargs="?", help="pipeline (or apply) run name or id (default: the latest pipeline run)")
    rp.set_defaults(func=cmd_report)

    rr = sub.add_parser("reproduce", help="train the papers' models and print our numbers beside the published ones")
    rr.add_argument("table", choices=["binarized-mnist", "parzen-mnist", "mode-collapse"])
    rr.add_argument("--budget", choices=["cpu", "full"], default="cpu",
                    help="cpu: cut for a 2-core CPU machine (default); full: papers' sizes, 50 epochs")
    rr.add_argument("--retrain", action="store_true", help="train again even where an identical training finished")
    rr.add_argument("--rows", help="only these rows (family names or parts of row labels, comma-separated); "
                                   "the table keeps the other rows' last results")
    rr.set_defaults(func=cmd_reproduce)

    from genzoo.uses import TASKS

    ap = sub.add_parser("apply", help="what the models are for: semi-supervised learning, missing data, super-resolution, translation")
    ap.add_argument("task", choices=TASKS)
    ap.add_argument("--methods", help="comma-separated methods (families and baselines; default: all that fit the dataset)")
    ap.add_argument("--dataset", help="built-in dataset (default: binarized-mnist for inpaint, else mnist)")
    ap.add_argument("--preset", choices=PRESETS, default="quick")
    ap.add_argument("--set", action="append", metavar="METHOD.KEY=VALUE", help="override a method's settings")
    ap.add_argument("--no-register", action="store_true", help="run and measure, but register nothing")
    ap.add_argument("--retrain", action="store_true", help="train family models again even where a training finished")
    ap.set_defaults(func=cmd_apply)

    ev = sub.add_parser("evaluator", help="train the feature network of one image dataset (a DVC stage command)")
    ev.add_argument("dataset")
    ev.set_defaults(func=cmd_evaluator)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error, already printed as one line (2)
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    configure()
    from data.errors import DataError
    from models.base import ConfigError

    try:
        return args.func(args)
    except (UsageError, DataError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
