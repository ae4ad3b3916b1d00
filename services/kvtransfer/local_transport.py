"""KV pages within one process: a direct tensor copy from the prefill pool into the decode pool's
reserved blocks (no serialization, no checksum: the bytes never leave memory).

Decode workers register their receiver here under their KV address; a sender finds it by that
address. The registry is per process by nature: only workers in this process can be reached."""

from __future__ import annotations

import asyncio
import threading
import time

from services.engine.errors import KVTransferError
from services.kvtransfer.inbox import KVReceiver
from services.kvtransfer.pages import PageRun
from services.kvtransfer.transport import KVSender, TransferReceipt


class LocalEndpoints:
    """Receivers of the decode workers living in this process, by KV address."""

    _lock = threading.Lock()
    _receivers: dict[str, KVReceiver] = {}

    @classmethod
    def register(cls, address: str, receiver: KVReceiver) -> None:
        with cls._lock:
            cls._receivers[address] = receiver

    @classmethod
    def unregister(cls, address: str) -> None:
        with cls._lock:
            cls._receivers.pop(address, None)

    @classmethod
    def lookup(cls, address: str) -> KVReceiver | None:
        with cls._lock:
            return cls._receivers.get(address)


class LocalKVSender(KVSender):
    name = "local"

    def __init__(self, address: str) -> None:
        self.address = address

    async def send_pages(self, run: PageRun) -> TransferReceipt:
        receiver = LocalEndpoints.lookup(self.address)
        if receiver is None:
            raise KVTransferError(f"no decode worker at {self.address} in this process")
        start = time.perf_counter()
        # The copy is large and releases the GIL; keep it off the caller's event loop.
        landed = await asyncio.to_thread(self._land, receiver, run)
        receiver.count_landed(landed)
        return TransferReceipt(len(run.block_ids), landed, time.perf_counter() - start)

    @staticmethod
    def _land(receiver: KVReceiver, run: PageRun) -> int:
        inbox = receiver.inbox(run.request_id)
        n = len(run.block_ids)
        inbox.open(run.layout, 0, n, n, run.num_tokens, run.dst_block_ids[:n])
        try:
            inbox.copy_pages(0, run.kv_cache, run.block_ids)
            return inbox.finish(0, n)
        except KVTransferError as exc:
            inbox.close(exc)
            raise
        except Exception as exc:
            error = KVTransferError(f"request {run.request_id}: local copy failed: {exc}")
            inbox.close(error)
            raise error from exc
