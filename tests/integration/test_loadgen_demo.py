"""`tandem demo`: a real `tandem serve` started on free ports, a short sweep, the report written,
the server stopped; and the same path pointed at a running server with --base-url."""

import json
import re
import socket
import subprocess
import sys

import pytest

from tests.loadgen_target.process import REPO_ROOT, TargetProcess


def tandem_demo(*argv, timeout=300):
    return subprocess.run([sys.executable, "-m", "orchestration.cli", "demo", "--no-progress", *argv],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def test_demo_against_a_running_server(tmp_path):
    with TargetProcess(ttft_ms=10, itl_ms=2) as target:
        done = tandem_demo("--base-url", target.http_url, "--sweep", "concurrency:1,2", "--num-prompts", "6",
                           "--result-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "demo.json").read_text())
    assert [r["completed"] for r in doc["runs"]] == [6, 6]
    assert "report:" in done.stdout and (tmp_path / "demo.html").exists()


@pytest.mark.slow
def test_demo_starts_tandem_serve_and_stops_it(tmp_path):
    done = tandem_demo("--sweep", "concurrency:1,2", "--num-prompts", "4", "--random-output-len", "8",
                       "--result-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr + (tmp_path / "server.log").read_text()[-2000:]
    doc = json.loads((tmp_path / "demo.json").read_text())
    assert [r["completed"] for r in doc["runs"]] == [4, 4] and all(r["failed"] == 0 for r in doc["runs"])
    assert doc["model_id"] == "tiny-random" and doc["token_count_method"].startswith("exact")
    assert all(r["total_output_tokens"] == 4 * 8 for r in doc["runs"])     # --ignore-eos: exact lengths
    # The preset's tokenizer covers its vocabulary: the client's count of the streamed text is the
    # server's, request by request (random ids used to decode to partial UTF-8 and re-encode apart).
    assert all(r["client_output_tokens"] == r["total_output_tokens"] and r["output_token_mismatches"] == 0
               and r["output_token_mismatch_cause"] is None for r in doc["runs"])
    assert "output token counts differ" not in done.stdout
    for ext in ("csv", "png", "html"):
        assert (tmp_path / f"demo.{ext}").stat().st_size > 0
    port = int(re.search(r"HTTP http://127\.0\.0\.1:(\d+)", (tmp_path / "server.log").read_text()).group(1))
    with pytest.raises(OSError):                                            # the server is gone
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
