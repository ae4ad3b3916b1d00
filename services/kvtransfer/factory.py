"""Chooses a transport for a destination: the one place that knows which transports exist.

`transport` is "grpc", "local" or "" (by locality: local when the decode worker lives in this
process, else grpc). A CUDA-IPC transport joins here: a name and an address scheme, and a sender
class implementing KVSender; workers do not change."""

from __future__ import annotations

import threading

from services.engine.errors import InvalidRequestError
from services.kvtransfer.grpc_sender import GrpcKVSender
from services.kvtransfer.local_transport import LocalEndpoints, LocalKVSender
from services.kvtransfer.transport import KVSender, TransferConfig

TRANSPORTS = ("grpc", "local")


class KVTransports:
    """The senders of one prefill worker, one per (transport, destination), reused across
    transfers (a gRPC channel is expensive to open). `close()` closes them all."""

    def __init__(self, config: TransferConfig = TransferConfig()) -> None:
        self._config = config
        self._senders: dict[tuple[str, str], KVSender] = {}
        self._lock = threading.Lock()

    def sender_for(self, kv_address: str, transport: str = "") -> KVSender:
        if not kv_address:
            raise InvalidRequestError("kv_address", "must name the decode worker's KV endpoint")
        if transport not in ("", *TRANSPORTS):
            raise InvalidRequestError("transport", f"must be one of {TRANSPORTS} or empty, got {transport!r}")
        if not transport:
            transport = "local" if LocalEndpoints.lookup(kv_address) is not None else "grpc"
        elif transport == "local" and LocalEndpoints.lookup(kv_address) is None:
            raise InvalidRequestError("transport", f"local: no decode worker at {kv_address} "
                                      "in this process")
        key = (transport, kv_address)
        with self._lock:
            sender = self._senders.get(key)
            if sender is None:
                sender = (LocalKVSender(kv_address) if transport == "local"
                          else GrpcKVSender(kv_address, self._config))
                self._senders[key] = sender
            return sender

    async def close(self) -> None:
        with self._lock:
            senders, self._senders = list(self._senders.values()), {}
        for sender in senders:
            await sender.close()
