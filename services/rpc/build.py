"""Generates the gRPC Python modules in this package from proto/ (grpcio-tools).

Run `python -m services.rpc.build` after editing a .proto file; tests/unit/test_rpc_fresh.py
fails while the committed modules are stale.
"""

from __future__ import annotations

import pathlib
import re
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = pathlib.Path(__file__).resolve().parent
PROTOS = ("tandem/v1/generation.proto", "tandem/v1/worker.proto")


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Writes the *_pb2.py / *_pb2_grpc.py modules under out_dir and returns their paths."""
    from grpc_tools import protoc

    args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *(str(PROTO_DIR / p) for p in PROTOS)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    written = sorted((out_dir / "tandem").rglob("*_pb2*.py*"))
    for path in written:
        # protoc writes absolute imports rooted at proto/; ours live under services.rpc.
        text = re.sub(r"^from tandem\.v1 import", "from services.rpc.tandem.v1 import",
                      path.read_text(), flags=re.M)
        path.write_text(text)
    for pkg in ("tandem", "tandem/v1"):
        (out_dir / pkg / "__init__.py").touch()
    return written


def main() -> int:
    written = generate(OUT_DIR)
    print("\n".join(str(p.relative_to(ROOT)) for p in written))
    return 0


def is_stale() -> list[str]:
    """Names of generated modules whose committed text differs from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(pathlib.Path(tmp))
        stale = []
        for path in fresh:
            rel = path.relative_to(tmp)
            committed = OUT_DIR / rel
            if not committed.exists() or committed.read_text() != path.read_text():
                stale.append(str(rel))
        return stale


if __name__ == "__main__":
    sys.exit(main())
