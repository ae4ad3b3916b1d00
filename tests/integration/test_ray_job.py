"""The README's Ray job command end to end: a local Ray head on loopback (free ports, its own temp
dir), `ray job submit --working-dir . -- python -m orchestration.ray_main ...`, the job's gateway
answers a completion, then the job and the head are stopped. The head runs as `ray start --block`
in its own process group, so stopping it ends exactly the processes this test started."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from services.addresses import free_ports

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
HOST = "127.0.0.1"


def _env() -> dict:
    # The job's `python` is this interpreter: the head and its workers inherit this PATH. Ray
    # turns token authentication on for a head when ~/.ray/auth_token exists, but not for the
    # CLI: a loopback test cluster says which mode it uses, for both sides alike.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _ray(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *argv], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _get(url: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, json.loads(resp.read() or b"{}")


def _wait_healthy(url: str, head: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert head.poll() is None, "the Ray head exited"
        try:
            if _get(url + "/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url}/health did not answer 200 within {timeout_s} s")


def _stop_group(head: subprocess.Popen) -> None:
    """SIGTERM to the head's process group (all of it started here), then SIGKILL what is left."""
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(head.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(head.pid, 0)
            except ProcessLookupError:
                head.wait()
                return
            head.poll()
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_job_submit_runs_ray_main_and_serves() -> None:
    (gcs, dashboard, http_port, grpc_port, client, node_manager, object_manager, metrics, agent,
     agent_grpc, runtime_env) = free_ports(11, HOST)
    temp_dir = tempfile.mkdtemp(prefix="ray-job-")          # short: Ray puts unix sockets under it
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", HOST, "--port", str(gcs),
         "--dashboard-host", HOST, "--dashboard-port", str(dashboard), "--include-dashboard", "true",
         "--ray-client-server-port", str(client), "--node-manager-port", str(node_manager),
         "--object-manager-port", str(object_manager), "--metrics-export-port", str(metrics),
         "--dashboard-agent-listen-port", str(agent),
         "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
         "--num-cpus", "3", "--temp-dir", temp_dir, "--disable-usage-stats"],
        cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    address = f"http://{HOST}:{dashboard}"
    job_id = None
    try:
        deadline = time.monotonic() + 120
        while True:                                         # the job server is up once it lists jobs
            assert head.poll() is None, head.stderr.read()[-3000:]
            if _ray("job", "list", "--address", address, timeout=60).returncode == 0:
                break
            assert time.monotonic() < deadline, "the Ray job server did not come up"
            time.sleep(1)
        submitted = _ray("job", "submit", "--address", address, "--working-dir", ".", "--no-wait", "--",
                         "python", "-m", "orchestration.ray_main", "--prefill-workers", "1",
                         "--decode-workers", "1", "--worker-host", HOST, "--host", HOST,
                         "--http-port", str(http_port), "--grpc-port", str(grpc_port))
        assert submitted.returncode == 0, submitted.stderr[-3000:] + submitted.stdout[-3000:]
        job_id = next(w.strip("'\"") for line in submitted.stdout.splitlines() if "submitted successfully" in line
                      for w in line.split() if w.strip("'\"").startswith("raysubmit_"))
        url = f"http://{HOST}:{http_port}"
        try:
            _wait_healthy(url, head, timeout_s=180)
        except AssertionError:
            logs = _ray("job", "logs", "--address", address, job_id).stdout
            raise AssertionError(f"job {job_id} does not serve; its log:\n{logs[-4000:]}") from None
        status, doc = _get(url + "/v1/completions", {"prompt": "Hello", "max_tokens": 4, "ignore_eos": True})
        assert status == 200 and doc["usage"]["completion_tokens"] == 4, doc
    finally:
        if job_id is not None:
            _ray("job", "stop", "--address", address, job_id, timeout=60)
        _stop_group(head)
        head.stderr.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
