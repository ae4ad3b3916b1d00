"""`tandem bench` end to end as a user runs it: a sweep that writes its report, Ctrl-C that still
writes what it has, and an unreachable target that gets one line and exit code 2."""

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.loadgen_target.process import REPO_ROOT, TargetProcess


def tandem_bench(*argv, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "orchestration.cli", "bench", *argv], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="module")
def target():
    with TargetProcess(ttft_ms=20, itl_ms=5) as t:
        yield t


def test_sweep_writes_every_report_file(target, tmp_path):
    proc = tandem_bench("--base-url", target.http_url, "--sweep", "concurrency:1,4", "--num-prompts", "12",
                        "--random-input-len", "16", "--random-output-len", "6", "--goodput", "ttft:100",
                        "--save-result", "--result-dir", str(tmp_path), "--result-filename", "sweep")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "concurrency=4" in out and "Time to First Token" in out
    for ext in ("json", "csv", "png", "html"):
        assert (tmp_path / f"sweep.{ext}").stat().st_size > 0
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["max_concurrency"] for r in doc["runs"]] == [1, 4]
    assert all(r["completed"] == 12 and r["goodput_fraction"] == 1.0 for r in doc["runs"])
    assert doc["model_id"] == "loadgen-target" and doc["token_count_method"].startswith("approximate")


def test_sweep_by_duration_takes_the_concurrency_from_the_sweep(target, tmp_path):
    proc = tandem_bench("--base-url", target.http_url, "--sweep", "concurrency:1,32,256", "--duration", "1",
                        "--random-input-len", "8", "--random-output-len", "4", "--save-result",
                        "--result-dir", str(tmp_path), "--result-filename", "by-duration", "--no-plots")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    doc = json.loads((tmp_path / "by-duration.json").read_text())
    assert [r["max_concurrency"] for r in doc["runs"]] == [1, 32, 256]
    assert all(r["completed"] > 0 and r["failed"] == 0 for r in doc["runs"])
    assert [r["max_concurrency_observed"] for r in doc["runs"]] == [1, 32, 256]


def test_ctrl_c_stops_and_still_writes(target, tmp_path):
    before = target.emission_stats()["tokens"]
    proc = tandem_bench("--base-url", target.http_url, "--max-concurrency", "4", "--duration", "30",
                        "--random-input-len", "8", "--random-output-len", "20", "--save-result",
                        "--result-dir", str(tmp_path), "--result-filename", "cut")
    deadline = time.monotonic() + 30
    # Interrupt mid-run, once every slot has finished a request (4 slots x at most 20 tokens):
    # the written result must hold completed requests, not only the ones cut short.
    while target.emission_stats()["tokens"] < before + 4 * 20 + 40 and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    doc = json.loads((tmp_path / "cut.json").read_text())
    assert doc["interrupted"] is True and doc["completed"] > 0 and doc["failed"] == 0
    assert doc["interrupted"] and doc["runs"][0]["interrupted"]


def test_unreachable_target_is_one_line_exit_2():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                 # closed again: nothing listens there
    for backend, url, workers in (("openai", f"http://127.0.0.1:{port}", "1"), ("tandem", f"127.0.0.1:{port}", "1"),
                                  ("openai", f"http://127.0.0.1:{port}", "2")):
        proc = tandem_bench("--backend", backend, "--base-url", url, "--num-prompts", "2",
                            "--random-input-len", "4", "--num-workers", workers)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, err
        assert "cannot reach" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
