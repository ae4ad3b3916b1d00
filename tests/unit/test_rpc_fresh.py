"""The committed gRPC modules under services/rpc match what proto/ generates now."""

from __future__ import annotations

import pytest

from services.rpc import build


@pytest.mark.timeout(60)
def test_generated_modules_match_the_protos() -> None:
    stale = build.is_stale()
    assert not stale, f"regenerate with `python -m services.rpc.build`: stale {stale}"


@pytest.mark.timeout(60)
def test_staleness_is_detected(tmp_path, monkeypatch) -> None:
    # A committed module that differs from the fresh output must be reported.
    target = tmp_path / "tandem" / "v1"
    target.mkdir(parents=True)
    for path in (build.OUT_DIR / "tandem" / "v1").glob("*_pb2*.py*"):
        (target / path.name).write_text(path.read_text())
    (target / "worker_pb2.py").write_text("# edited by hand\n")
    monkeypatch.setattr(build, "OUT_DIR", tmp_path)
    assert build.is_stale() == ["tandem/v1/worker_pb2.py"]
