"""The dependency floors in pyproject.toml are what the committed gRPC code needs: grpcio at least
the version the *_pb2_grpc modules were generated with (older ones raise at import), protobuf at
least the gencode version of the *_pb2 modules and of the same major, and the generator pinned
to that version so that regenerating reproduces the committed code."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from services.rpc import build

GENERATED = build.OUT_DIR / "tandem" / "v1"


def requirements() -> dict[str, Requirement]:
    doc = tomllib.loads((build.ROOT / "pyproject.toml").read_text())
    deps = doc["project"]["dependencies"] + doc["project"]["optional-dependencies"]["test"]
    return {r.name: r for r in map(Requirement, deps)}


def floor(req: Requirement) -> Version:
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
    assert len(floors) == 1, f"{req}: give exactly one floor (>= or ==)"
    return floors[0]


def generated_versions(pattern: str, glob: str) -> set[str]:
    found = {m.group(1) for path in GENERATED.glob(glob) for m in [re.search(pattern, path.read_text())] if m}
    assert found, f"no generated version found in {GENERATED}/{glob}"
    return found


def test_grpc_floors_are_the_generated_version() -> None:
    (grpc_generated,) = generated_versions(r"GRPC_GENERATED_VERSION = '([^']+)'", "*_pb2_grpc.py")
    reqs = requirements()
    for name in ("grpcio", "grpcio-health-checking", "grpcio-reflection"):
        assert floor(reqs[name]) == Version(grpc_generated), (
            f"pyproject {reqs[name]} but services/rpc was generated for grpcio {grpc_generated}")
    assert str(reqs["grpcio-tools"].specifier) == f"=={grpc_generated}", (
        f"pyproject {reqs['grpcio-tools']}: pin the generator of services/rpc ({grpc_generated})")


def test_protobuf_floor_is_the_gencode_version() -> None:
    (gencode,) = generated_versions(r"# Protobuf Python Version: (\S+)", "*_pb2.py")
    protobuf = requirements()["protobuf"]
    assert floor(protobuf) == Version(gencode), f"pyproject {protobuf} but gencode is protobuf {gencode}"
    major = Version(gencode).major
    assert Version(f"{major + 1}") not in protobuf.specifier, (
        f"pyproject {protobuf}: gencode {gencode} runs on protobuf {major}.x only")
    assert protobuf.specifier.contains(gencode)


def test_disagreement_is_detected(tmp_path, monkeypatch) -> None:
    # A pyproject whose grpcio floor is below the generated version must fail the check.
    text = (build.ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(re.sub(r'"grpcio>=[^"]+"', '"grpcio>=1.60"', text))
    monkeypatch.setattr(build, "ROOT", tmp_path)
    try:
        test_grpc_floors_are_the_generated_version()
    except AssertionError as exc:
        assert "grpcio>=1.60" in str(exc)
    else:
        raise AssertionError("a grpcio floor below the generated version passed")
