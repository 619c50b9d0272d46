"""What genzoo promises against other people on the machine or the network (README, "Reliability and
security"): Ray refuses a client without the project's token and listens on 127.0.0.1 only; the token
file is private to its owner and lives in the project.

Every process here carries a marker in its environment and is stopped by id afterwards
(tests/ops/processes.py), so no other Ray instance on the machine is touched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from processes import kill_marked

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to stop its processes")

# genzoo's own start path: configure() then ensure_ray(), as `genzoo run` does; a task proves that
# the workers Ray starts got the token; the GCS address goes to stdout, then it waits for stdin to close.
SERVER = """
import sys
from genzoo.env import configure
configure()
import ray
from tasks.services import ensure_ray
ensure_ray()
assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
print("GCS=" + ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
ray.shutdown()
"""

CLIENT = """
import sys, ray
ray.init(address=sys.argv[1], include_dashboard=False, configure_logging=False, log_to_driver=False)
print("ANSWER=" + str(ray.get(ray.remote(lambda: 6 * 7).remote())))
"""

REFUSED = "Authentication token is missing or incorrect"


def clean_env(home: Path) -> dict[str, str]:
    """This interpreter's environment without genzoo's or Ray's settings, and a throw-away HOME (so a
    token in the real ~/.ray can neither help a client nor be written)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENZOO_", "MLFLOW_", "PREFECT_", "RAY_"))}
    return {**env, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def genzoo_ray(tmp_path_factory):
    """A local cluster started the way genzoo starts one, in its own process and project."""
    base = tmp_path_factory.mktemp("ray-auth")
    project, home = base / "project", base / "home"
    project.mkdir()
    home.mkdir()
    marker = f"GENZOO_SECURITY_TEST={uuid.uuid4().hex}"
    temp = Path(tempfile.mkdtemp(prefix="gzsec-", dir="/tmp"))  # Ray's unix sockets: short paths
    env = {**clean_env(home), "GENZOO_PROJECT_DIR": str(project), "TMPDIR": str(temp),
           "GENZOO_RAY_OBJECT_STORE_BYTES": str(100 * 1024 ** 2), "PYTHONPATH": str(Path(__file__).parents[2]),
           marker.split("=")[0]: marker.split("=")[1]}
    proc = subprocess.Popen([sys.executable, "-c", SERVER], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("GCS="), f"genzoo's Ray did not start: {line}{proc.stderr.read()[-3000:]}"
        yield {"address": line.strip().split("=", 1)[1], "project": project, "home": home, "env": env}
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        kill_marked(marker)
        proc.stdout.close()
        proc.stderr.close()


def connect(genzoo_ray, **settings: str) -> subprocess.Popen:
    """A client process connecting to the cluster with only `settings` as its Ray environment
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray from rewriting 127.0.0.1 to the routable address)."""
    env = {**clean_env(genzoo_ray["home"]), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **settings}
    return subprocess.Popen([sys.executable, "-c", CLIENT, genzoo_ray["address"]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_ray_refuses_a_client_without_the_projects_token(genzoo_ray):
    # Both refusals at once. A refused client retries its GCS connection once a second before it gives up.
    give_up = {"RAY_gcs_server_port_wait_time_s": "2"}  # 2 tries, about 1 s apart (20 by default)
    no_token = connect(genzoo_ray, **give_up)
    wrong_token = connect(genzoo_ray, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64, **give_up)
    for proc in (no_token, wrong_token):
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode != 0 and "ANSWER=" not in out, out[-3000:]
        assert REFUSED in out, out[-3000:]
    token = genzoo_ray["project"] / ".ray" / "auth_token"
    right = connect(genzoo_ray, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    out, _ = right.communicate(timeout=300)
    assert right.returncode == 0 and "ANSWER=42" in out, out[-3000:]


def test_the_token_file_is_the_projects_and_private(genzoo_ray):
    token = genzoo_ray["project"] / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert len(token.read_text()) == 64 and int(token.read_text(), 16) > 0  # 256 random bits, hex
    assert not (genzoo_ray["home"] / ".ray").exists(), "Ray wrote a token under $HOME"


def test_a_local_cluster_listens_on_loopback_only(genzoo_ray):
    host, port = genzoo_ray["address"].rsplit(":", 1)
    assert host == "127.0.0.1"
    from ray._private.services import node_ip_address_from_perspective

    routable = node_ip_address_from_perspective()
    assert routable != "127.0.0.1", "this machine has no other address to check against"
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.settimeout(10)
        s.connect((routable, int(port)))
    with socket.create_connection(("127.0.0.1", int(port)), timeout=10):
        pass  # the same port does answer on loopback


def test_a_ray_address_without_its_token_file_is_one_sentence(tmp_path):
    env = {**clean_env(tmp_path), "GENZOO_PROJECT_DIR": str(tmp_path), "RAY_ADDRESS": "127.0.0.1:1",
           "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.run([sys.executable, "-c", "from genzoo.env import configure; configure()\n"
                           "from tasks.services import ensure_ray; ensure_ray()"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"the token file {tmp_path / '.ray' / 'auth_token'} does not exist" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / ".ray").exists()  # nothing made for a cluster genzoo did not start


# --- the registry: `genzoo fetch`/`score` run nothing stored in it ---------------------------------

SHAPES = {"points": [2], "image": [1, 8, 8], "binary": [1, 8, 8]}


def trained(family: str):
    """A model of `family` after one training step (so its weights are not the initial ones), in eval mode."""
    import torch

    import models

    kind = models.FAMILIES[family].supported_kinds[0]
    torch.manual_seed(0)
    model = models.build(family, {"data_shape": SHAPES[kind], "data_kind": kind, "levels": 17})
    x = torch.rand((16, *SHAPES[kind]), generator=torch.Generator().manual_seed(0))
    x = torch.randn((16, 2)) if kind == "points" else (x > 0.5).float() if kind == "binary" else torch.round(x * 16) / 16
    model.training_step(x, model.configure_optimizers())
    return model.eval()


def register_model(root: Path, model, name: str) -> str:
    """`model` registered as `name` the way the pipeline registers a training (tasks/register.py)."""
    from tasks.register import register
    from tasks.services import client, experiment_id

    path = root / "runs" / "security" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    run = client().create_run(experiment_id(root), run_name=name)
    version = register(run.info.run_id, str(path), name, list(model.config.data_shape), {"family": model.name})
    client().set_terminated(run.info.run_id)
    return f"{name}/{version}"


def fetched_equals_own_sample(registered, model, n: int = 5, seed: int = 3, exact: bool = True) -> bool:
    """The same samples for the seed. Exact in one process; across processes (`exact=False`) to float32
    rounding, since another process may run matrix products on another number of threads."""
    import numpy as np
    import torch

    own = model.sample(n, torch.Generator().manual_seed(seed)).numpy()
    if registered.shape != own.shape:
        return False
    return bool((registered == own).all()) if exact else bool(np.allclose(registered, own, rtol=1e-4, atol=1e-5))


@pytest.mark.parametrize("family", sorted(__import__("models").FAMILIES))
def test_every_family_fetched_from_the_registry_samples_like_the_trained_model(project, family):
    """Registered, then loaded by genzoo's loader (weights only): the same samples for a seed as the
    trained model object itself -- not the pyfunc compared with the pyfunc."""
    from genzoo.serving import registry
    from tasks.services import client

    model = trained(family)
    ref = register_model(project, model, f"{family}-security")
    loaded = registry.load(client(), ref)
    assert type(loaded.model) is type(model) and loaded.model.config == model.config
    assert fetched_equals_own_sample(loaded.sample(5, 3), model)


def stored_code(project: Path, ref: str) -> Path:
    """The sampler.py the registry stores beside version `ref`'s weights (local artifact store)."""
    from tasks.services import client

    name, version = ref.split("/")
    model_id = client().get_model_version(name, version).source.removeprefix("models:/")
    (path,) = (project / "mlartifacts").rglob(f"{model_id}/artifacts/sampler.py")
    return path


def test_fetch_from_a_tampered_registry_runs_none_of_its_code(project, tmp_path):
    model = trained("vae")
    ref = register_model(project, model, "vae-tampered")
    marker = tmp_path / "stored-code-ran"
    code = stored_code(project, ref)
    code.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n" + code.read_text())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    out = tmp_path / "s.npy"
    proc = subprocess.run(["genzoo", "fetch", ref, "-n", "7", "--seed", "3", "-o", str(out)], env=env,
                          cwd=project, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists(), "genzoo fetch imported the code stored in the registry"
    import numpy as np

    assert fetched_equals_own_sample(np.load(out), model, n=7, seed=3, exact=False)

    # The tampering is live: MLflow's own loader does import the stored file.
    load = subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.pyfunc.load_model('models:/{ref}')"],
                          env=env, cwd=project, capture_output=True, text=True, timeout=300)
    assert load.returncode == 0 and marker.read_text() == "ran", load.stderr[-3000:]


def test_fetch_and_score_refuse_an_evaluator_model_in_one_sentence(project, tmp_path, capsys):
    """An `evaluator-<dataset>` version (register_evaluator logs its network as the 'evaluator' artifact)."""
    import warnings

    import mlflow

    import genzoo.serving.evaluator
    from genzoo.cli import main
    from tasks.register import create_version, pip_requirements
    from tasks.services import client, experiment_id

    folder = tmp_path / "evaluator"
    folder.mkdir()
    (folder / "evaluator.pt").write_bytes(b"not read by fetch")
    run = client().create_run(experiment_id(project), run_name="evaluator-security")
    with mlflow.start_run(run_id=run.info.run_id), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = mlflow.pyfunc.log_model(name="model", python_model=genzoo.serving.evaluator.__file__,
                                       artifacts={"evaluator": str(folder)}, pip_requirements=pip_requirements())
    create_version("evaluator-security", info, run.info.run_id, {})
    data = tmp_path / "rows.npy"
    __import__("numpy").save(data, __import__("numpy").zeros((2, 2), dtype="float32"))
    capsys.readouterr()
    for argv in (["fetch", "evaluator-security", "-n", "4", "-o", str(tmp_path / "x.npy")],
                 ["score", "evaluator-security", "--data", str(data), "-o", str(tmp_path / "ll.npy")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is an evaluator network" in err and "not a generative model" in err and len(err.splitlines()) == 1, err
        assert "Traceback" not in err
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "ll.npy").exists()


# --- the UI servers `make ui` starts (genzoo/ui.py) ------------------------------------------------

FOREIGN = "http://evil.example"
TELEMETRY_OFF = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def request(url: str, method: str = "GET", headers: dict | None = None, body: dict | None = None):
    """(status, response headers, parsed body) of one HTTP request; error statuses are answers too."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            status, hdrs, text = r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        status, hdrs, text = exc.code, exc.headers, exc.read()
    try:
        return status, hdrs, json.loads(text or b"null")
    except ValueError:
        return status, hdrs, text


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


@contextlib.contextmanager
def ui_server(kind: str, base: Path, health: str) -> Iterator[dict]:
    """`python -m genzoo.ui KIND --port P` (what `make ui` runs) in a fresh project, healthy (or the
    test fails) for the `with` block, then stopped."""
    import time
    import urllib.request

    from processes import free_port

    project, home = base / "project", base / "home"
    project.mkdir(parents=True)
    home.mkdir()
    port = free_port()
    marker = f"GENZOO_SECURITY_TEST={uuid.uuid4().hex}"
    env = {**clean_env(home), "GENZOO_PROJECT_DIR": str(project), "PYTHONPATH": str(Path(__file__).parents[2]),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", marker.split("=")[0]: marker.split("=")[1]}
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "genzoo.ui", kind, "--port", str(port)], env=env, cwd=project,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300  # a loaded 2-core machine can take minutes
    while True:
        try:
            with urllib.request.urlopen(url + health, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert proc.poll() is None, (base / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{kind} not healthy after 300 s"
        time.sleep(0.5)
    try:
        yield {"url": url, "port": port, "pid": proc.pid}
    finally:
        kill_marked(marker)
        log.close()


@pytest.fixture(scope="module")
def prefect_ui(tmp_path_factory):
    with ui_server("prefect-server", tmp_path_factory.mktemp("prefect-ui"), "/api/health") as server:
        yield server


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory):
    with ui_server("mlflow-server", tmp_path_factory.mktemp("mlflow-ui"), "/health") as server:
        yield server


def refused_on_the_routable_address(port: int) -> None:
    from ray._private.services import node_ip_address_from_perspective

    routable = node_ip_address_from_perspective()
    assert routable != "127.0.0.1", "this machine has no other address to check against"
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):
        s.settimeout(10)
        s.connect((routable, port))


def test_prefect_ui_server_is_quiet_local_and_refuses_foreign_pages(prefect_ui):
    url, port = prefect_ui["url"], prefect_ui["port"]
    env = environ_of(prefect_ui["pid"])  # exec'd: the helper's process is the server
    assert {k: env.get(k) for k in TELEMETRY_OFF} == TELEMETRY_OFF
    refused_on_the_routable_address(port)

    # CORS: a foreign page gets no allow header (its preflight is refused); the server's own origin does.
    status, headers, _ = request(url + "/api/health", headers={"Origin": FOREIGN})
    assert status == 200 and "access-control-allow-origin" not in {k.lower() for k in headers}
    status, headers, _ = request(url + "/api/flows/", "OPTIONS", {"Origin": FOREIGN, "Access-Control-Request-Method": "POST"})
    assert status >= 400 and headers.get("access-control-allow-origin") is None
    own = f"http://127.0.0.1:{port}"
    status, headers, _ = request(url + "/api/health", headers={"Origin": own})
    assert headers.get("access-control-allow-origin") == own

    # CSRF: creating a flow without a token is refused and creates nothing; with the server's token it works.
    status, _, body = request(url + "/api/flows/", "POST", body={"name": "csrf-probe"})
    assert status == 403 and "CSRF" in str(body), body
    status, _, token = request(url + "/api/csrf-token?client=genzoo-test")
    assert status == 200 and token["token"]
    csrf = {"Prefect-Csrf-Token": token["token"], "Prefect-Csrf-Client": "genzoo-test"}
    status, _, flows = request(url + "/api/flows/filter", "POST", csrf, body={})
    assert status == 200 and flows == [], "the refused request created a flow"
    status, _, flow = request(url + "/api/flows/", "POST", csrf, body={"name": "csrf-probe"})
    assert status in (200, 201) and flow["name"] == "csrf-probe"


def test_prefect_client_in_make_worker_environment_passes_csrf(prefect_ui, tmp_path):
    """`make worker`/`make deploy` run through `genzoo.ui run`: Prefect's client fetches the CSRF token."""
    code = ("import asyncio\nfrom prefect.client.orchestration import get_client\n"
            "async def main():\n    async with get_client() as c:\n"
            "        print('POOL=' + (await c.create_work_pool(__import__('prefect.client.schemas.actions', "
            "fromlist=['x']).WorkPoolCreate(name='csrf-pool', type='process'))).name)\nasyncio.run(main())")
    env = {**clean_env(tmp_path), "GENZOO_PROJECT_DIR": str(tmp_path), "PREFECT_API_URL": prefect_ui["url"] + "/api",
           "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.run([sys.executable, "-m", "genzoo.ui", "run", "--", sys.executable, "-c", code], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "POOL=csrf-pool" in proc.stdout, proc.stderr[-3000:]


def test_mlflow_ui_server_is_quiet_local_and_refuses_foreign_hosts_and_pages(mlflow_ui):
    url, port = mlflow_ui["url"], mlflow_ui["port"]
    env = environ_of(mlflow_ui["pid"])
    assert {k: env.get(k) for k in TELEMETRY_OFF} == TELEMETRY_OFF
    refused_on_the_routable_address(port)

    search = url + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert request(search, headers={"Host": "evil.example"})[0] == 403  # DNS rebinding: a foreign Host header
    assert request(search)[0] == 200
    create = url + "/api/2.0/mlflow/experiments/create"
    assert request(create, "POST", {"Origin": FOREIGN}, {"name": "from-a-foreign-page"})[0] == 403
    status, _, body = request(create, "POST", {"Origin": f"http://127.0.0.1:{port}"}, {"name": "from-its-own-ui"})
    assert status == 200 and body["experiment_id"], body
    status, _, body = request(url + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=from-a-foreign-page")
    assert status == 404, "the refused request created an experiment"


class _RunsCode:
    """Pickled, it calls Path.write_text on load: what a weights file written by an attacker would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_a_weights_file_holding_code_is_refused_without_running_it(project, tmp_path):
    import torch

    from genzoo.serving import registry
    from tasks.services import client

    ref = register_model(project, trained("gan"), "gan-tampered-weights")
    name, version = ref.split("/")
    model_id = client().get_model_version(name, version).source.removeprefix("models:/")
    (weights,) = (project / "mlartifacts").rglob(f"{model_id}/artifacts/artifacts/*.pt")
    marker = tmp_path / "weights-code-ran"
    torch.save({"family": "gan", "payload": _RunsCode(marker)}, weights)
    with pytest.raises(registry.RegistryError, match="not a genzoo weights-only file"):
        registry.load(client(), ref)
    assert not marker.exists()
    torch.load(weights, weights_only=False)  # the file is live: an unpickling loader runs it
    assert marker.read_text() == "ran"
