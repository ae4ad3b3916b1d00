"""The one interface every KV page transport implements.

A prefill worker ships a prefilled request's pages with `KVSender.send_pages(run)` and releases
its blocks once that returns (the receiver has landed and verified them); a decode worker lands
them through its `KVReceiver` (inbox.py) into the blocks it reserved. Workers see only
`KVSender`, `KVReceiver` and the factory (`KVTransports`): grpc (msgpack-framed chunks), local
(same process) and cuda_ipc (the sender maps the receiver's pool through a CUDA IPC handle and
writes the pages with one kernel, then reports them on the control channel) all land through
the same inbox."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from services.engine.errors import ConfigError
from services.kvtransfer.pages import PageRun


@dataclass(frozen=True)
class TransferConfig:
    """How pages travel. `chunk_bytes` bounds one gRPC message (max message size is set from it
    explicitly on both ends); at most `max_inflight_chunks` encoded chunks wait for the wire."""

    # Measured best on a 16-core host (benchmarks/RESULTS.md, "KV transfer"): more streams or
    # larger chunks only add contention for the GIL-held copies in gRPC's Python layer.
    chunk_bytes: int = 2**20
    max_inflight_chunks: int = 8
    streams: int = 2                        # parallel streams (connections) per transfer
    min_stripe_bytes: int = 8 * 2**20       # smaller transfers use fewer streams
    max_concurrent_streams: int = 64        # receiving side: streams landing at once
    window_bytes: int = 64 * 2**20          # HTTP/2 flow-control window per stream
    timeout_s: float = 60.0
    ipc_checksums: bool = True              # cuda_ipc: per-page checksums on both GPUs
    # The secret every call between workers (and from the gateway) carries; "": none asked or sent
    # (services/security/cluster_token.py). Never printed.
    cluster_token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not 64 * 2**10 <= self.chunk_bytes <= 64 * 2**20:
            raise ConfigError(f"chunk_bytes must be in [64 KiB, 64 MiB], got {self.chunk_bytes}")
        for name in ("streams", "min_stripe_bytes", "max_concurrent_streams", "window_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_inflight_chunks < 1:
            raise ConfigError(f"max_inflight_chunks must be >= 1, got {self.max_inflight_chunks}")
        if self.timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {self.timeout_s}")

    @property
    def max_message_bytes(self) -> int:
        # A chunk plus its frame header (request id, block ids, checksums of up to a few
        # thousand pages): generous, but bounded.
        return self.chunk_bytes + 2**20


@dataclass(frozen=True)
class TransferReceipt:
    """What one acknowledged transfer moved."""

    num_pages: int
    num_bytes: int
    seconds: float


class KVSender(abc.ABC):
    """Ships pages to one receiver. Safe to use for several transfers at once."""

    name: str

    @abc.abstractmethod
    async def send_pages(self, run: PageRun) -> TransferReceipt:
        """Returns once the receiver has landed and verified every page; raises KVTransferError
        otherwise (the receiver then holds nothing of this transfer)."""

    async def close(self) -> None:
        """Releases connections; a closed sender sends nothing more."""
