"""Chooses a transport for a destination: the one place that knows which transports exist.

`transport` is "grpc", "local", "cuda_ipc", or "auto" / "" (by locality): local when the decode
worker lives in this process; else cuda_ipc when its KV pool is in CUDA memory on this node, on a
GPU this process can see, and this worker's own pool is in CUDA memory too; else grpc. Auto asks
the decode worker once (ExportPool) and keeps the answer for that destination. Forcing cuda_ipc
where it cannot work fails the transfer with the reason (it never hangs, never falls back
silently); forcing local with no such worker in this process is refused at once."""

from __future__ import annotations

import asyncio
import logging
import threading

import torch

from services.engine.errors import InvalidRequestError, KVTransferError
from services.kvtransfer import cuda_ipc_pool
from services.kvtransfer.cuda_ipc_sender import CudaIpcKVSender, KVControlChannel, probe_pool
from services.kvtransfer.grpc_sender import GrpcKVSender
from services.kvtransfer.local_transport import LocalEndpoints, LocalKVSender
from services.kvtransfer.pages import PageRun
from services.kvtransfer.transport import KVSender, TransferConfig, TransferReceipt

log = logging.getLogger("tandem.kvtransfer")

TRANSPORTS = ("auto", "grpc", "local", "cuda_ipc")
AUTO = ("", "auto")


def ipc_reason(own_device: torch.device, export_reason: str) -> str:
    """Why cuda_ipc cannot carry pages from a pool on own_device to a peer whose export this
    process judged (cuda_ipc_pool.unavailable_reason); "" when it can."""
    if own_device.type != "cuda":
        return f"this worker's KV pool is on {own_device}, not a CUDA device"
    return export_reason


class AutoKVSender(KVSender):
    """Decides between cuda_ipc and grpc on the first transfer to a destination, then delegates."""

    name = "auto"

    def __init__(self, address: str, config: TransferConfig) -> None:
        self.address = address
        self._config = config
        self._chosen: KVSender | None = None
        self._lock = asyncio.Lock()

    @property
    def chosen(self) -> KVSender | None:
        return self._chosen

    async def choose(self, own_device: torch.device) -> KVSender:
        async with self._lock:
            if self._chosen is None:
                control = KVControlChannel(self.address, self._config)
                export = await probe_pool(control)
                reason = ipc_reason(own_device, cuda_ipc_pool.unavailable_reason(export))
                if not reason:
                    sender = CudaIpcKVSender(self.address, self._config, control, export)
                    try:
                        await sender.remote_pool()
                    except KVTransferError as exc:
                        reason = str(exc)
                        await sender.close()
                    else:
                        self._chosen = sender
                if reason:
                    await control.close()
                    self._chosen = GrpcKVSender(self.address, self._config)
                log.info("KV pages to %s go by %s%s", self.address, self._chosen.name,
                         f" ({reason})" if reason else "")
            return self._chosen

    async def send_pages(self, run: PageRun) -> TransferReceipt:
        sender = await self.choose(run.kv_cache.device)
        return await sender.send_pages(run)

    async def close(self) -> None:
        if self._chosen is not None:
            await self._chosen.close()


class KVTransports:
    """The senders of one prefill worker, one per (transport, destination), reused across
    transfers (a gRPC channel is expensive to open, an IPC mapping opens once). `close()` closes
    them all."""

    def __init__(self, config: TransferConfig = TransferConfig()) -> None:
        self._config = config
        self._senders: dict[tuple[str, str], KVSender] = {}
        self._lock = threading.Lock()

    def sender_for(self, kv_address: str, transport: str = "") -> KVSender:
        if not kv_address:
            raise InvalidRequestError("kv_address", "must name the decode worker's KV endpoint")
        if transport not in ("", *TRANSPORTS):
            raise InvalidRequestError("transport", f"must be one of {TRANSPORTS} or empty, got {transport!r}")
        local = LocalEndpoints.lookup(kv_address) is not None
        if transport in AUTO:
            transport = "local" if local else "auto"
        elif transport == "local" and not local:
            raise InvalidRequestError("transport", f"local: no decode worker at {kv_address} "
                                      "in this process")
        key = (transport, kv_address)
        with self._lock:
            sender = self._senders.get(key)
            if sender is None:
                sender = self._make(transport, kv_address)
                self._senders[key] = sender
            return sender

    @property
    def destinations(self) -> frozenset[str]:
        """The decode KV endpoints this worker has a sender for (has shipped pages to, or tried)."""
        with self._lock:
            return frozenset(address for _, address in self._senders)

    def _make(self, transport: str, kv_address: str) -> KVSender:
        if transport == "local":
            return LocalKVSender(kv_address)
        if transport == "cuda_ipc":
            return CudaIpcKVSender(kv_address, self._config)
        if transport == "auto":
            return AutoKVSender(kv_address, self._config)
        return GrpcKVSender(kv_address, self._config)

    async def close(self) -> None:
        with self._lock:
            senders, self._senders = list(self._senders.values()), {}
        for sender in senders:
            await sender.close()
