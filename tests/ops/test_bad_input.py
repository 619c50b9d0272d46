"""Bad input through the real CLI: one sentence, exit 2, no traceback, nothing written or registered,
and no service started for what can be checked up front (issue 11, section 1).

The battery runs in-process (`genzoo.cli.main`) against the session's scaffolded project; a
tripwire on the three doors to the services (Prefect's server + Ray start-up, the flow, Ray itself)
fails a case that would start them. A few cases run as a subprocess to check stderr end to end with
a fresh PREFECT_HOME and RAY_TMPDIR, which must stay empty. The last test runs the `pipeline` flow
through Prefect with a bad dataset: the flow run ends FAILED with the sentence and writes nothing.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from genzoo.cli import main

RUN = ["run", "--families", "gan", "--preset", "smoke"]


# ---------------------------------------------------------------------- bad files
def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height pixels (a decompression bomb's header), with no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def _npz_claiming_rows(path: Path, rows: int) -> None:
    """A ~300-byte .npz whose one member's header claims `rows` x 1000 float64 values."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (rows, 1000)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", buf.getvalue())


def _folder(root: Path, name: str, images: list) -> Path:
    from PIL import Image

    folder = root / name
    folder.mkdir()
    for i, im in enumerate(images):
        (im if isinstance(im, Image.Image) else Image.fromarray(im)).save(folder / f"{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    """Every bad file and folder of the battery, by name."""
    from PIL import Image

    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    grey = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(12)]
    out = {}

    def arr(name: str, x, **kw) -> None:
        np.save(d / f"{name}.npy", x, **kw)
        out[name] = d / f"{name}.npy"

    (d / "garbage.npz").write_bytes(rng.bytes(300))
    out["garbage_npz"] = d / "garbage.npz"
    arr("truncated", rng.normal(size=(100, 2)))
    out["truncated"].write_bytes(out["truncated"].read_bytes()[:-40])
    x = np.ones((40, 2), dtype=np.float32)
    x[5, 0] = np.nan
    arr("withnan", x)
    x = np.ones((40, 2))
    x[7, 1] = np.inf
    arr("withinf", x)
    arr("empty", np.zeros((0, 2), dtype=np.float32))
    arr("onerow", np.zeros((1, 2), dtype=np.float32))
    arr("strings", np.array([["a", "b"]] * 20))
    arr("objects", np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True)
    arr("complex", np.ones((20, 2), dtype=np.complex128))
    arr("fivedim", np.zeros((20, 2, 2, 2, 2), dtype=np.float32))
    arr("flat", np.zeros(30, dtype=np.float32))
    arr("zerowidth", np.zeros((20, 0), dtype=np.float32))
    _npz_claiming_rows(d / "claims.npz", 10 ** 12)
    out["claims_npz"] = d / "claims.npz"
    import zipfile

    with zipfile.ZipFile(d / "noarrays.npz", "w") as z:
        z.writestr("readme.txt", "nothing")
    out["noarrays_npz"] = d / "noarrays.npz"
    (d / "table.csv").write_text("1,2\n3,4\n")
    out["csv"] = d / "table.csv"
    arr("it's", rng.normal(size=(20, 2)))
    (d / "emptyfolder").mkdir()
    out["emptyfolder"] = d / "emptyfolder"
    out["corruptimg"] = _folder(d, "corruptimg", grey)
    (out["corruptimg"] / "99.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out["sizes"] = _folder(d, "sizes", grey + [np.zeros((4, 4), dtype=np.uint8)])
    out["mixed"] = _folder(d, "mixed", grey + [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)])
    out["sixteen"] = _folder(d, "sixteen", [Image.fromarray(rng.integers(0, 65535, (8, 8), dtype=np.uint16))
                                            for _ in range(12)])
    out["alpha"] = _folder(d, "alpha", [rng.integers(0, 256, (8, 8, 4), dtype=np.uint8) for _ in range(12)])
    out["bomb"] = _folder(d, "bomb", grey)
    _png_header_only(out["bomb"] / "99.png", 20000, 20000)
    (d / "notafolder").write_text("a file")
    out["notafolder"] = d / "notafolder"
    return out


def _gpu_case() -> tuple[list[str], str]:
    """--use-gpu true where no training can have its GPUs: none on a CPU machine, or one worker too many."""
    import torch

    if not torch.cuda.is_available():
        return ["--use-gpu", "true"], "no CUDA GPU"
    return ["--use-gpu", "true", "--num-workers", str(torch.cuda.device_count() + 1),
            "--set", "train.cpus_per_worker=0.01"], "GPU(s)"


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


# (case id, argv, words the one line must contain)
CASES = [
    # datasets (read as headers and checked before anything starts)
    ("garbage-npz", lambda b: RUN + ["--datasets", str(b["garbage_npz"])], ["garbage.npz", "not a readable .npz"]),
    ("truncated-npy", lambda b: RUN + ["--datasets", str(b["truncated"])], ["truncated.npy", "truncated"]),
    ("nan", lambda b: RUN + ["--datasets", str(b["withnan"])], ["withnan.npy", "NaN", "row 5"]),
    ("inf", lambda b: RUN + ["--datasets", str(b["withinf"])], ["withinf.npy", "infinite", "row 7"]),
    ("empty-array", lambda b: RUN + ["--datasets", str(b["empty"])], ["empty.npy", "at least 10 examples"]),
    ("one-row", lambda b: RUN + ["--datasets", str(b["onerow"])], ["onerow.npy", "at least 10 examples"]),
    ("strings", lambda b: RUN + ["--datasets", str(b["strings"])], ["strings.npy", "<U1", "numeric arrays only"]),
    ("objects", lambda b: RUN + ["--datasets", str(b["objects"])], ["objects.npy", "holds object data"]),
    ("complex", lambda b: RUN + ["--datasets", str(b["complex"])], ["complex.npy", "complex128"]),
    ("five-dims", lambda b: RUN + ["--datasets", str(b["fivedim"])], ["fivedim.npy", "expected (N, D)"]),
    ("flat", lambda b: RUN + ["--datasets", str(b["flat"])], ["flat.npy", "(30,)"]),
    ("zero-width", lambda b: RUN + ["--datasets", str(b["zerowidth"])], ["zerowidth.npy", "at least one value"]),
    ("npz-claims-1e12-rows", lambda b: RUN + ["--datasets", str(b["claims_npz"])],
     ["claims.npz", "more than the limit", "GENZOO_MAX_DATASET_BYTES"]),
    ("npz-no-arrays", lambda b: RUN + ["--datasets", str(b["noarrays_npz"])], ["noarrays.npz", "holds no arrays"]),
    ("csv-file", lambda b: RUN + ["--datasets", str(b["csv"])], ["table.csv", ".npy/.npz"]),
    ("quote-in-name", lambda b: RUN + ["--datasets", str(b["it's"])], ["it's", "cannot name a dataset"]),
    ("empty-folder", lambda b: RUN + ["--datasets", str(b["emptyfolder"])], ["emptyfolder", "no PNG or JPEG"]),
    ("corrupt-image", lambda b: RUN + ["--datasets", str(b["corruptimg"])], ["99.png", "corrupt"]),
    ("image-sizes", lambda b: RUN + ["--datasets", str(b["sizes"])], ["sizes", "different sizes"]),
    ("grey-and-colour", lambda b: RUN + ["--datasets", str(b["mixed"])], ["mixed", "mix greyscale and colour"]),
    ("16-bit-png", lambda b: RUN + ["--datasets", str(b["sixteen"])], ["00.png", "16-bit", "will not clip"]),
    ("alpha-png", lambda b: RUN + ["--datasets", str(b["alpha"])], ["00.png", "alpha channel"]),
    ("decompression-bomb", lambda b: RUN + ["--datasets", str(b["bomb"])], ["99.png", "decompression-bomb"]),
    ("missing-path", lambda b: RUN + ["--datasets", str(b["csv"].parent / "missing.npy")], ["missing.npy"]),
    ("unknown-dataset", lambda b: RUN + ["--datasets", "no-such-set"], ["no-such-set", "unknown dataset"]),
    ("same-dataset-twice", lambda b: RUN + ["--datasets", "ring8,ring8"], ["name the same dataset twice"]),
    # families and overrides (parsed against the typed configs)
    ("unknown-family", lambda b: ["run", "--families", "gan,nope", "--datasets", "ring8"], ["'nope'"]),
    ("set-bad-list", lambda b: RUN + ["--datasets", "ring8", "--set", "train.epochs=["],
     ["train.epochs", "an integer", "'['"]),
    ("set-float-text", lambda b: RUN + ["--datasets", "ring8", "--set", "gan.lr=fast"], ["gan.lr", "a number"]),
    ("set-nan", lambda b: RUN + ["--datasets", "ring8", "--set", "gan.lr=nan"], ["gan.lr", "finite"]),
    ("set-unknown-key", lambda b: RUN + ["--datasets", "ring8", "--set", "train.epochz=3"], ["'epochz'", "train"]),
    ("set-unknown-section", lambda b: RUN + ["--datasets", "ring8", "--set", "nope.x=1"], ["'nope'", "section"]),
    ("set-no-dot", lambda b: RUN + ["--datasets", "ring8", "--set", "epochs=3"], ["SECTION.KEY=VALUE", "epochs=3"]),
    ("set-eval-unknown", lambda b: RUN + ["--datasets", "ring8", "--set", "evaluate.n_samplez=10"], ["'n_samplez'"]),
    ("set-eval-choice", lambda b: RUN + ["--datasets", "ring8", "--set", "evaluate.fid_network=resnet"],
     ["fid_network", "resnet"]),
    ("set-bool", lambda b: RUN + ["--datasets", "ring8", "--set", "train.restore_best=maybe"],
     ["train.restore_best", "true or false"]),
    ("override-absent-family", lambda b: RUN + ["--datasets", "ring8", "--set", "vae.lr=1e-3"], ["'vae'"]),
    ("epochs-zero", lambda b: RUN + ["--datasets", "ring8", "--epochs", "0"], ["train.epochs", "positive"]),
    ("batch-negative", lambda b: RUN + ["--datasets", "ring8", "--batch-size", "-1"], ["batch_size", "-1"]),
    ("seed-negative", lambda b: RUN + ["--datasets", "ring8", "--set", "train.seed=-1"], ["train.seed", "-1"]),
    ("seed-too-big", lambda b: RUN + ["--datasets", "ring8", "--set", "evaluate.seed=4294967296"],
     ["evaluate.seed", "4294967295"]),
    ("family-seed-too-big", lambda b: RUN + ["--datasets", "ring8", "--set", "gan.seed=5000000000"], ["gan.seed"]),
    ("size-zero", lambda b: ["run", "--families", "vae", "--datasets", "ring8", "--set", "vae.hidden=0"],
     ["vae.hidden", "positive", "got 0"]),
    ("size-negative", lambda b: RUN + ["--datasets", "ring8", "--set", "gan.pack=-2"], ["pack", "-2"]),
    ("use-gpu-word", lambda b: RUN + ["--datasets", "ring8", "--set", "train.use_gpu=maybe"], ["use_gpu", "maybe"]),
    ("bad-preset", lambda b: ["run", "--preset", "nope"], ["--preset", "'nope'"]),
    ("not-an-int", lambda b: RUN + ["--num-workers", "two"], ["--num-workers", "'two'"]),
    # trainings that could never be scheduled
    ("too-many-workers", lambda b: RUN + ["--datasets", "ring8", "--num-workers", str(_cpus() + 1),
                                          "--set", "train.cpus_per_worker=1", "--batch-size", "64"],
     ["num_workers", "could never start"]),
    ("too-many-cpus", lambda b: RUN + ["--datasets", "ring8", "--set", f"train.cpus_per_worker={_cpus() * 2}"],
     ["cpus_per_worker", "could never start"]),
    ("use-gpu-without-gpu", lambda b: RUN + ["--datasets", "ring8"] + _gpu_case()[0], ["use_gpu", _gpu_case()[1]]),
    # fetch, score and report: checked before any model is loaded
    ("fetch-n-huge", lambda b: ["fetch", "gan-ring8", "-n", "1000000000", "-o", str(b["csv"].parent / "s.npy")],
     ["-n", "1000000000", "100,000"]),
    ("fetch-n-zero", lambda b: ["fetch", "gan-ring8", "-n", "0", "-o", str(b["csv"].parent / "s.npy")], ["-n", "0"]),
    ("fetch-unwritable", lambda b: ["fetch", "gan-ring8", "-o", "/proc/nope/x.npy"], ["/proc/nope/x.npy", "writable"]),
    ("fetch-under-a-file", lambda b: ["fetch", "gan-ring8", "-o", str(b["notafolder"] / "x.npy")],
     ["notafolder", "cannot write"]),
    ("fetch-suffix", lambda b: ["fetch", "gan-ring8", "-o", str(b["csv"].parent / "s.txt")], ["s.txt", ".npy or .png"]),
    ("fetch-quote-name", lambda b: ["fetch", "gan'); drop", "-o", str(b["csv"].parent / "s.npy")], ["gan');"]),
    ("fetch-quote-alias", lambda b: ["fetch", "gan-ring8@cham'pion", "-o", str(b["csv"].parent / "s.npy")],
     ["cham'pion", "alias"]),
    ("fetch-bad-version", lambda b: ["fetch", "gan-ring8/one", "-o", str(b["csv"].parent / "s.npy")], ["'one'"]),
    ("fetch-seed", lambda b: ["fetch", "gan-ring8", "--seed", "-1", "-o", str(b["csv"].parent / "s.npy")],
     ["--seed", "-1"]),
    ("score-garbage", lambda b: ["score", "vae-ring8", "--data", str(b["truncated"]), "-o",
                                 str(b["csv"].parent / "ll.npy")], ["truncated.npy"]),
    ("score-nan", lambda b: ["score", "vae-ring8", "--data", str(b["withnan"]), "-o",
                             str(b["csv"].parent / "ll.npy")], ["withnan.npy", "NaN"]),
    ("score-objects", lambda b: ["score", "vae-ring8", "--data", str(b["objects"]), "-o",
                                 str(b["csv"].parent / "ll.npy")], ["objects.npy", "object data"]),
    ("report-quote", lambda b: ["report", "x' OR '1'='1"], ["x' OR"]),
]


def _state(project: Path) -> dict:
    """What a bad input must leave unchanged: registered versions, MLflow runs, prepared and run folders."""
    from tasks.services import client

    c = client()
    experiments = [e.experiment_id for e in c.search_experiments()]
    runs = {r.info.run_id for r in c.search_runs(experiments, max_results=50000)} if experiments else set()
    listing = {sub: sorted(p.name for p in (project / sub).iterdir()) if (project / sub).is_dir() else []
               for sub in ("data/prepared", "runs", "reports")}
    return {"versions": {(v.name, v.version) for v in c.search_model_versions()}, "runs": runs, **listing}


@pytest.fixture()
def tripwire(monkeypatch):
    """Fail any case that reaches Prefect's server, the flow or Ray: the up-front checks must stop it."""
    import flows.pipeline
    import genzoo.startup
    import tasks.services

    def started(what):
        def trip(*args, **kwargs):
            raise AssertionError(f"{what} was reached by a bad input")
        return trip

    monkeypatch.setattr(genzoo.startup, "warm_up", started("service start-up (Prefect server, Ray)"))
    monkeypatch.setattr(flows.pipeline, "pipeline", started("the pipeline flow"))
    monkeypatch.setattr(tasks.services, "ensure_ray", started("Ray"))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_sentence_exit_2_and_nothing_written(case, bad, project, tripwire, capsys):
    _, argv, words = case
    before = _state(project)
    code = main(argv(bad))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert _state(project) == before


def test_battery_size():
    """BENCHMARKS.md counts the bad inputs tried: the issue asks for at least 30."""
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


def test_size_limit_is_a_setting(bad, project, tripwire, capsys, monkeypatch, tmp_path):
    """GENZOO_MAX_DATASET_BYTES bounds an ordinary file too (and a bad value of it is named)."""
    ok = tmp_path / "fine.npy"
    np.save(ok, np.zeros((100, 4), dtype=np.float32))  # 1,600 bytes
    monkeypatch.setenv("GENZOO_MAX_DATASET_BYTES", "1000")
    assert main(RUN + ["--datasets", str(ok)]) == 2
    assert "1,600 bytes" in capsys.readouterr().err
    monkeypatch.setenv("GENZOO_MAX_DATASET_BYTES", "lots")
    assert main(RUN + ["--datasets", str(ok)]) == 2
    assert "GENZOO_MAX_DATASET_BYTES must be a positive number" in capsys.readouterr().err


def test_set_values_get_their_fields_types():
    from genzoo.config import parse_overrides

    parsed = parse_overrides(["vae.lr=1e-3", "train.epochs=3", "train.restore_best=false", "gmmn.hidden=[8,16]",
                              "train.use_gpu=true", "evaluate.seed=7"])
    assert parsed.models == {"vae": {"lr": 0.001}, "gmmn": {"hidden": [8, 16]}}
    assert isinstance(parsed.models["vae"]["lr"], float)
    assert parsed.train == {"epochs": 3, "restore_best": False, "use_gpu": "true"} and parsed.evaluate == {"seed": 7}


@pytest.mark.parametrize("argv, words", [
    (lambda b: RUN + ["--datasets", str(b["garbage_npz"])], ["garbage.npz"]),
    (lambda b: RUN + ["--datasets", "ring8", "--set", "train.epochs=["], ["train.epochs"]),
    (lambda b: ["fetch", "gan-ring8", "-n", "4", "-o", "/proc/nope/x.npy"], ["/proc/nope/x.npy"]),
], ids=["garbage-npz", "set-bad-list", "fetch-unwritable"])
def test_bad_input_end_to_end_in_a_fresh_process(argv, words, bad, project, tmp_path):
    """stderr as a user sees it; a fresh PREFECT_HOME and RAY_TMPDIR stay empty (no service started)."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "RAY_TMPDIR": str(tmp_path / "ray"),
           "GENZOO_PROJECT_DIR": str(project)}
    env.pop("PREFECT_API_URL", None)
    before = _state(project)
    proc = subprocess.run([sys.executable, "-m", "genzoo.cli", *argv(bad)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    prefect_home = tmp_path / "prefect"
    assert not prefect_home.exists() or not any(prefect_home.rglob("*")), list(prefect_home.rglob("*"))
    assert not (tmp_path / "ray").exists()
    assert _state(project) == before


def test_bad_input_exits_2_and_registers_nothing(services, project, tmp_path, capsys):
    """Moved here from tests/pipeline/test_pipeline.py, strengthened: with the services running (where a
    late check would train and register first), every case is refused with its sentence and leaves the
    registry's versions, the runs and the prepared folders as they were."""
    before = _state(project)
    bad = tmp_path / "badvalues.npy"
    x = np.ones((40, 2), dtype=np.float32)
    x[5, 0] = np.nan
    np.save(bad, x)
    cases = [
        (["run", "--families", "gan,nope", "--datasets", "ring8", "--preset", "smoke"], "'nope'"),
        (["run", "--datasets", "no-such-set", "--preset", "smoke"], "no-such-set"),
        (["run", "--datasets", str(tmp_path / "missing"), "--preset", "smoke"], "missing"),
        (["run", "--datasets", "ring8", "--epochs", "0", "--preset", "smoke"], "train.epochs"),
        (["run", "--datasets", "ring8", "--batch-size", "-1", "--preset", "smoke"], "batch_size"),
        (["run", "--datasets", "ring8", "--set", "evaluate.n_samplez=10", "--preset", "smoke"], "n_samplez"),
        (["run", "--datasets", "ring8", "--set", "evaluate.fid_network=resnet", "--preset", "smoke"], "resnet"),
        (["run", "--families", "gan", "--datasets", str(bad), "--preset", "smoke"], "badvalues.npy"),
    ]
    for argv, word in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and word in err, err
    assert not (project / "data" / "prepared" / "badvalues").exists()
    assert _state(project) == before


def test_a_flow_run_with_bad_input_fails_with_the_sentence(services, project, bad):
    """A run started through Prefect (as from the UI) checks the same inputs in `plan`: the flow run ends
    FAILED with the sentence itself as its state message, and nothing is prepared, tracked or registered."""
    from prefect.client.orchestration import get_client

    from flows.pipeline import pipeline

    before = _state(project)
    for kwargs, words in [
        ({"datasets": [str(bad["withnan"])]}, ["withnan.npy", "NaN"]),
        ({"datasets": ["ring8"], "train_overrides": {"num_workers": _cpus() + 1, "cpus_per_worker": 1}},
         ["could never start"]),
        ({"datasets": ["ring8"], "model_overrides": {"gan": {"lr": "1e-3"}}}, ["'lr'", "must be a number"]),
    ]:
        state = pipeline(families=["gan"], preset="smoke", return_state=True, **kwargs)
        assert state.is_failed(), state
        with get_client(sync_client=True) as c:
            recorded = c.read_flow_run(state.state_details.flow_run_id).state
        assert recorded.is_failed() and all(w in recorded.message for w in words), recorded.message
        assert "Error" not in recorded.message and "exception" not in recorded.message  # the bare sentence
    from flows.train import train  # the `train` deployment: the pipeline as a subflow passes the sentence on

    state = train(family="gan", dataset=str(bad["withnan"]), preset="smoke", return_state=True)
    with get_client(sync_client=True) as c:
        recorded = c.read_flow_run(state.state_details.flow_run_id).state
    assert recorded.is_failed() and "withnan.npy" in recorded.message and "Error" not in recorded.message, recorded
    assert _state(project) == before
