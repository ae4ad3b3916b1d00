"""`tandem serve --autoscale` as a user runs it (process launcher, tiny model), under a `tandem bench`
load that rises then falls: the decode pool (the short role: its KV blocks fill) grows to its
maximum, then, once the load is gone, both roles shrink back to their minimum; no admitted request
fails;
`tandem_workers` follows and every decision is counted with its reason."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.integration.test_serve_command import _read_until

_WORKERS = re.compile(r'^tandem_workers\{role="(\w+)"\} (\S+)$', re.M)
_DECISIONS = re.compile(r'^tandem_scaling_decisions_total\{([^}]*)\} (\S+)$', re.M)


def _metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        return reply.read().decode()


class WorkerCounts(threading.Thread):
    """Samples tandem_workers{role} from /metrics until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.samples, self.done = url, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.samples.append({r: float(v) for r, v in _WORKERS.findall(_metrics(self.url))})
            except OSError:
                pass
            self.done.wait(0.25)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_rising_then_falling_load_scales_decode_up_then_everything_down(tmp_path) -> None:
    serve = subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "serve", "--launcher", "process",
         "--grpc-port", "0", "--http-port", "0", "--num-kv-blocks", "48", "--max-num-seqs", "16",
         "--autoscale", "--min-prefill-workers", "1", "--max-prefill-workers", "2",
         "--min-decode-workers", "1", "--max-decode-workers", "2", "--scale-interval", "0.25",
         "--scale-sustain-ticks", "2", "--scale-up-cooldown", "1", "--scale-down-cooldown", "3",
         "--scale-down-window", "3",
         "--log-level", "INFO"],
        stdout=subprocess.PIPE, stderr=open(tmp_path / "serve.log", "wb"))
    counts = None
    try:
        url = _read_until(serve, r"HTTP (http://\S+);", 180).group(1)
        counts = WorkerCounts(url)
        counts.start()
        bench = subprocess.run(
            [sys.executable, "-m", "orchestration.cli", "bench", "--base-url", url,
             "--sweep", "concurrency:2,24,2", "--duration", "8", "--random-input-len", "64",
             "--random-output-len", "32", "--ignore-eos", "--request-timeout", "120",
             "--save-result", "--result-dir", str(tmp_path), "--result-filename", "load",
             "--no-plots", "--no-progress"], capture_output=True, text=True, timeout=240)
        assert bench.returncode == 0, bench.stderr[-3000:]
        runs = json.loads((tmp_path / "load.json").read_text())["runs"]
        # Nothing admitted fails; while a worker starts, the gateway may refuse (429, before
        # admission) what could not begin in time.
        errors = [r["errors_by_code"] for r in runs]
        assert [{c: n for c, n in e.items() if c != "429"} for e in errors] == [{}, {}, {}], errors
        assert all(r["completed"] for r in runs), errors
        # A few of them, not a refusing gateway: at most one in 20 of what completed.
        refused, completed = sum(e.get("429", 0) for e in errors), sum(r["completed"] for r in runs)
        assert refused <= max(3, completed // 20), (errors, completed)
        # The load is gone: both roles go back to their minimum.
        while True:
            workers = dict(_WORKERS.findall(_metrics(url)))
            if workers == {"prefill": "1.0", "decode": "1.0"}:
                break
            assert serve.poll() is None, "tandem serve exited"
            time.sleep(0.5)
        decisions = {}
        for labels, n in _DECISIONS.findall(_metrics(url)):
            label = dict(re.findall(r'(\w+)="(\w+)"', labels))
            decisions[(label["direction"], label["reason"], label["role"])] = float(n)
        ups = {k: n for k, n in decisions.items() if k[0] == "up" and k[2] == "decode"}
        assert ups and set(k[1] for k in ups) <= {"decode_kv", "decode_running", "admission_queue",
                                                    "tpot_slo"}, decisions
        assert decisions.get(("down", "idle", "decode")) == sum(ups.values()), decisions
        counts.done.set()
        counts.join()
        assert max(s.get("decode", 0) for s in counts.samples) == 2
        # Nothing moved back and forth within the run: decode went up, then down, once.
        decode = [s["decode"] for s in counts.samples if "decode" in s]
        changes = [b for a, b in zip(decode, decode[1:]) if a != b]
        assert changes == [2.0, 1.0], changes
        log = (tmp_path / "serve.log").read_text()
        assert re.search(r"scaling decode up: decode_\w+ \(", log) and "scaling decode down: idle" in log
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=60) == 0
    finally:
        if counts is not None:
            counts.done.set()
        if serve.poll() is None:
            serve.kill()
            serve.wait()
