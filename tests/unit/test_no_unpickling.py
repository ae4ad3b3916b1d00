"""Nothing that arrives over a network is unpickled: no module of services/, orchestration/ or
loadgen/ imports a pickle-like codec or calls a loader that can build arbitrary objects, msgpack
is decoded without hooks, and the CUDA IPC hand-off rebuilds the peer's pool from plain proto
fields with the classes fixed in the code (services/kvtransfer/cuda_ipc_pool.py).

Ray's own control plane (actor arguments, between a Ray driver and its actors) pickles; that is
Ray's cluster, which must be private (README, Security). The engine process's pipe
(services/enginecore/) is a socket pair that only a worker and the engine process it started hold
(multiprocessing authkey); its messages are msgpack, and the one pickled message (the shared pool
handle at start) never crosses a network. The scanner is checked on a sample that
holds each forbidden pattern, so it cannot pass by finding nothing."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCANNED = ("services", "orchestration", "loadgen")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "marshal", "shelve", "joblib",
                  "jsonpickle", "copyreg"}
UNSAFE_BUILTINS = {"eval", "exec"}                       # `model.eval()` is torch's, and fine
UNSAFE_PARTS = {"unsafe_load", "full_load", "ForkingPickler"}


def _name(node: ast.AST) -> str:
    """`a.b.c` for an attribute chain, `f` for a name, "" otherwise."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _name(node.value)
        return f"{inner}.{node.attr}" if inner else node.attr
    return ""


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def violations(source: str, where: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{where}:{node.lineno} imports {a.name}" for a in node.names
                      if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"{where}:{node.lineno} imports from {node.module}")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in UNSAFE_BUILTINS or any(part in UNSAFE_PARTS or part in PICKLE_MODULES
                                              for part in name.split(".")):
                found.append(f"{where}:{node.lineno} calls {name}")
            elif name.endswith("torch.load"):
                weights_only = _keyword(node, "weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append(f"{where}:{node.lineno} calls torch.load without weights_only=True")
            elif last in ("load", "loads") and name.split(".")[0] in ("np", "numpy"):
                allow = _keyword(node, "allow_pickle")
                if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                    found.append(f"{where}:{node.lineno} calls {name} with allow_pickle")
            elif name in ("yaml.load", "yaml.load_all"):
                found.append(f"{where}:{node.lineno} calls {name} (use yaml.safe_load)")
            elif name.split(".")[0] == "msgpack" and last in ("unpackb", "unpack", "Unpacker"):
                hooks = [k for k in ("ext_hook", "object_hook", "object_pairs_hook", "list_hook")
                         if _keyword(node, k) is not None]
                if hooks:
                    found.append(f"{where}:{node.lineno} calls {name} with {', '.join(hooks)}")
    return found


def test_the_scanner_finds_each_forbidden_pattern() -> None:
    sample = "\n".join([
        "import pickle", "from cloudpickle import loads", "import marshal as m", "import dill",
        "torch.load(f)", "torch.load(f, weights_only=False)", "np.load(f, allow_pickle=True)",
        "yaml.load(s)", "msgpack.unpackb(b, ext_hook=h)", "msgpack.Unpacker(object_hook=h)",
        "eval(s)", "exec(s)", "multiprocessing.reduction.ForkingPickler.loads(b)",
    ])
    assert len(violations(sample, "sample")) == 13, violations(sample, "sample")
    safe = "\n".join(["torch.load(f, weights_only=True)", "np.load(f)", "yaml.safe_load(s)",
                      "msgpack.unpackb(b, raw=False)", "json.loads(s)"])
    assert violations(safe, "safe") == []


def test_nothing_on_the_wire_is_unpickled() -> None:
    files = [p for d in SCANNED for p in (ROOT / d).rglob("*.py") if "services/rpc/tandem" not in p.as_posix()]
    assert len(files) > 100            # the scan saw the code base, not an empty directory
    found = [v for p in files for v in violations(p.read_text(), str(p.relative_to(ROOT)))]
    assert found == []


def test_the_cuda_ipc_handle_is_rebuilt_from_plain_fields_with_fixed_classes() -> None:
    source = (ROOT / "services/kvtransfer/cuda_ipc_pool.py").read_text()
    calls = [n for n in ast.walk(ast.parse(source))
             if isinstance(n, ast.Call) and _name(n.func).endswith("rebuild_cuda_tensor")]
    assert len(calls) == 1
    args = calls[0].args
    # The tensor class, storage class and dtype are the code's own, never read from the message.
    assert [_name(args[0]), _name(args[4]), _name(args[5])] == ["torch.Tensor", "torch.storage.TypedStorage",
                                                               "torch.uint8"]
    # Every other argument is a proto field of the export (bytes / ints / bools), or a local.
    for arg in args[6:]:
        inner = arg.args[0] if isinstance(arg, ast.Call) else arg
        assert isinstance(inner, ast.Constant) or _name(inner).startswith(("export.", "device.")), ast.dump(arg)
