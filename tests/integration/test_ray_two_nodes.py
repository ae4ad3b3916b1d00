"""A two-node Ray cluster on loopback: a head and a second node (`ray start`, each with its own
CPUs, custom resource, ports and temp dir), then `ray job submit` of orchestration.ray_main with
two node groups spread across nodes. Each node runs one prefill and one decode worker (a group
stays on one node), and the gateway serves completions through them. Every process this test
starts runs in its own process group and is stopped at the end."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections import Counter

import pytest

from services.addresses import free_ports
from tests.integration.test_ray_job import BIN, HOST, ROOT, _env, _get, _ray, _stop_group, _wait_healthy


def _node(temp_dir: str, head_port: int, resource: str, picked: list[int],
          dashboard_port: int | None = None):
    """The head when dashboard_port is given (its GCS on head_port), else a node joining it;
    picked: 7 free ports of its own."""
    ports = [arg for flag, port in zip(("--node-manager-port", "--object-manager-port",
                                        "--metrics-export-port", "--dashboard-agent-listen-port",
                                        "--dashboard-agent-grpc-port", "--runtime-env-agent-port"),
                                       picked) for arg in (flag, str(port))]
    if dashboard_port is not None:     # the head
        where = ["--head", "--port", str(head_port), "--dashboard-host", HOST,
                 "--dashboard-port", str(dashboard_port), "--include-dashboard", "true",
                 "--ray-client-server-port", str(picked[6])]
    else:
        where = ["--address", f"{HOST}:{head_port}"]
    return subprocess.Popen(
        [str(BIN / "ray"), "start", "--block", "--node-ip-address", HOST, *where, *ports,
         "--num-cpus", "4", "--resources", json.dumps({resource: 1}), "--temp-dir", temp_dir,
         "--disable-usage-stats"],
        cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)


def _wait(predicate, what: str, nodes: list, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for node in nodes:
            assert node.poll() is None, node.stderr.read()[-3000:]
        assert time.monotonic() < deadline, what
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_workers_spread_over_two_nodes_serve_through_the_gateway() -> None:
    # Every port of the test in one pick, so no two of them can be the same.
    gcs, dashboard, http_port, grpc_port, *node_ports = free_ports(4 + 7 + 7, HOST)
    temp_dirs = [tempfile.mkdtemp(prefix="ray2n-") for _ in range(2)]   # short: unix sockets live there
    nodes = [_node(temp_dirs[0], gcs, "node_head", node_ports[:7], dashboard)]
    address = f"http://{HOST}:{dashboard}"
    job_id = None
    try:
        _wait(lambda: _ray("job", "list", "--address", address, timeout=60).returncode == 0,
              "the Ray job server did not come up", nodes)
        nodes.append(_node(temp_dirs[1], gcs, "node_second", node_ports[7:]))

        def two_alive() -> bool:
            listed = _ray("list", "nodes", "--address", address, "--format", "json", timeout=60)
            try:        # while the state API warms up, the command may print no JSON
                nodes_listed = json.loads(listed.stdout) if listed.returncode == 0 else []
            except ValueError:
                return False
            return sum(n["state"] == "ALIVE" for n in nodes_listed) == 2
        _wait(two_alive, "the second node did not join", nodes)
        # Two groups of (1 prefill + 1 decode) = 2 CPUs each: one node (4 CPUs) could hold both
        # ("pack" would), "spread" puts one on each node.
        submitted = _ray("job", "submit", "--address", address, "--working-dir", ".", "--no-wait", "--",
                         "python", "-m", "orchestration.ray_main", "--prefill-workers", "2",
                         "--decode-workers", "2", "--ray-node-groups", "2", "--ray-strategy", "spread",
                         "--num-kv-blocks", "64", "--worker-host", HOST, "--host", HOST,
                         "--http-port", str(http_port), "--grpc-port", str(grpc_port))
        assert submitted.returncode == 0, submitted.stderr[-3000:] + submitted.stdout[-3000:]
        job_id = next(w.strip("'\"") for line in submitted.stdout.splitlines() if "submitted successfully" in line
                      for w in line.split() if w.strip("'\"").startswith("raysubmit_"))
        url = f"http://{HOST}:{http_port}"
        try:
            _wait_healthy(url, nodes[0], timeout_s=240)
        except AssertionError:
            logs = _ray("job", "logs", "--address", address, job_id).stdout
            raise AssertionError(f"job {job_id} does not serve; its log:\n{logs[-4000:]}") from None
        for i in range(6):
            status, doc = _get(url + "/v1/completions", {"prompt": f"Hello {i}", "max_tokens": 4,
                                                         "ignore_eos": True})
            assert status == 200 and doc["usage"]["completion_tokens"] == 4, doc
        listed = _ray("list", "actors", "--address", address, "--format", "json", "--filter",
                      "state=ALIVE", "--detail", timeout=60)
        assert listed.returncode == 0, listed.stderr
        workers = [a for a in json.loads(listed.stdout) if a.get("class_name") == "WorkerActor"]
        per_node = Counter((a["node_id"], a["repr_name"].split("-")[0]) for a in workers)
        node_ids = {a["node_id"] for a in workers}
        assert len(node_ids) == 2, workers
        assert per_node == Counter({(n, role): 1 for n in node_ids for role in ("prefill", "decode")}), per_node
    finally:
        if job_id is not None:
            _ray("job", "stop", "--address", address, job_id, timeout=60)
        for node in reversed(nodes):
            _stop_group(node)
            node.stderr.close()
        for d in temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
