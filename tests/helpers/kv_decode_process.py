"""A decode side in a process of its own, for CUDA IPC tests and benchmarks: a KV pool on a GPU,
the receiver and its KVTransfer server (the real ones a decode worker runs), driven over a pipe.

    side = DecodeSideProcess(pool_shape, dtype="bfloat16", device="cuda:0")
    side.address                       # the KVTransfer server, host:port
    side.call("expect", rid, block_ids)
    side.call("landed", rid)           # ("ok", num_tokens) or ("error", message)
    side.call("pages", block_ids)      # the pages' bytes
    side.close()
"""

from __future__ import annotations

import multiprocessing
import traceback

import torch

COMMAND_TIMEOUT_S = 120.0


def _serve(conn, pool_shape, dtype: str, device: str, block_size: int) -> None:
    from services.kvtransfer import KVReceiver, KVTransferServer, TransferConfig
    from services.kvtransfer.pages import DTYPES
    try:
        pool = torch.zeros(pool_shape, dtype=DTYPES[dtype], device=device)
        receiver = KVReceiver(pool, block_size)
        server = KVTransferServer(receiver, TransferConfig())
        conn.send(("ready", f"127.0.0.1:{server.start('127.0.0.1', 0)}"))
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            message = conn.recv()
        except EOFError:
            break
        if message is None:
            break
        verb, *args = message
        try:
            if verb == "expect":
                receiver.expect(args[0], list(args[1]))
                reply = ("ok", None)
            elif verb == "landed":
                inbox = receiver.inbox(args[0])
                try:
                    reply = ("ok", inbox.landed.result(timeout=COMMAND_TIMEOUT_S))
                except Exception as exc:
                    reply = ("error", str(exc))
                receiver.discard(args[0])
            elif verb == "pages":
                torch.cuda.synchronize(pool.device)
                # Plain bytes: nothing depends on how tensors are pickled between processes.
                reply = ("ok", pool[list(args[0])].cpu().view(torch.uint8).numpy().tobytes())
            elif verb == "fill":
                pool.fill_(args[0])
                torch.cuda.synchronize(pool.device)
                reply = ("ok", None)
            else:
                reply = ("error", f"unknown command {verb!r}")
        except Exception:
            reply = ("error", traceback.format_exc())
        conn.send(reply)
    server.stop(None)


class DecodeSideProcess:
    def __init__(self, pool_shape: tuple[int, ...], dtype: str = "bfloat16", device: str = "cuda:0",
                 block_size: int | None = None) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, theirs = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, daemon=True, args=(
            theirs, tuple(pool_shape), dtype, device, block_size or pool_shape[3]))
        self._proc.start()
        if not self._conn.poll(COMMAND_TIMEOUT_S):
            self.close()
            raise RuntimeError("the decode-side process did not start in time")
        status, value = self._conn.recv()
        if status != "ready":
            self.close()
            raise RuntimeError(f"the decode-side process failed to start:\n{value}")
        self.address = value

    def call(self, verb: str, *args):
        self._conn.send((verb, *args))
        if not self._conn.poll(COMMAND_TIMEOUT_S):
            raise RuntimeError(f"the decode-side process did not answer {verb!r}")
        return self._conn.recv()

    def ok(self, verb: str, *args):
        status, value = self.call(verb, *args)
        if status != "ok":
            raise RuntimeError(f"decode side: {verb} failed: {value}")
        return value

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
