"""The Ray launcher end to end (tests/integration/ray_scenario.py). Ray starts its own GCS and
raylet processes; a test process that already ran hundreds of gRPC servers and threads makes
that start-up slow and fragile, so the scenario runs in a fresh interpreter."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ray_actors_serve_a_disaggregated_request() -> None:
    proc = subprocess.run([sys.executable, "-m", "tests.integration.ray_scenario"], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ray scenario: ok" in proc.stdout
