"""What genzoo promises against other people on the machine or the network (README, "Reliability and
security"): Ray refuses a client without the project's token and listens on 127.0.0.1 only; the token
file is private to its owner and lives in the project.

Every process here carries a marker in its environment and is stopped by id afterwards
(tests/ops/processes.py), so no other Ray instance on the machine is touched.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

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
    # Both refusals at once: Ray retries for a while before it gives up.
    no_token = connect(genzoo_ray)
    wrong_token = connect(genzoo_ray, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
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
