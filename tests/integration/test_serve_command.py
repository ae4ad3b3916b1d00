"""`tandem serve` as a user runs it: workers as local processes, the gateway in front, a request
through the HTTP API, and Ctrl-C (SIGINT) stopping everything cleanly."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest


def _read_until(proc: subprocess.Popen, pattern: str, timeout_s: float) -> re.Match:
    found: list[re.Match] = []

    def scan() -> None:
        for raw in proc.stdout:
            match = re.search(pattern, raw.decode())
            if match:
                found.append(match)
                return
    reader = threading.Thread(target=scan, daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert found, f"no line matching {pattern!r} within {timeout_s}s (exit code {proc.poll()})"
    return found[0]


@pytest.mark.timeout(150)
def test_serve_answers_over_http_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "serve", "--launcher", "process",
         "--grpc-port", "0", "--http-port", "0", "--num-kv-blocks", "64", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        workers = _read_until(proc, r"prefill \['([^']+)'\], decode \['([^']+)'\]", 90)
        url = _read_until(proc, r"HTTP (http://\S+);", 60).group(1)
        body = json.dumps({"model": "tiny-random", "prompt": "Hello", "max_tokens": 5,
                           "temperature": 0}).encode()
        request = urllib.request.Request(f"{url}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            completion = json.load(reply)
        assert completion["usage"]["completion_tokens"] >= 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        # The workers went with it: nothing listens on their ports any more.
        import socket
        for address in workers.groups():
            host, port = address.rsplit(":", 1)
            with socket.socket() as s:
                assert s.connect_ex((host, int(port))) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
