"""Sending pages through CUDA IPC: the prefill worker writes them straight into the decode
worker's reserved blocks, GPU to GPU (same GPU, or a peer one on the same node).

Per peer, once: `ExportPool` over the control channel (gRPC, the decode worker's KV address),
then the pool is mapped into this process (cuda_ipc_pool.open_pool). Per transfer:

    BeginWrite(blocks, tokens, layout)   the decode side checks them against the reservation and
                                         keeps the blocks busy (not reusable) until EndWrite
    one page-copy kernel                 kernels/page_copy.py: every page from its prefill block
                                         into its decode block, each byte read once, written once
                                         (to another GPU: a local gather, then one peer copy per
                                         run of consecutive decode blocks)
    per-page checksums of the sources    on this GPU (device_checksum.py), same stream
    stream synchronize                   the copy is complete before the decode side is told
    EndWrite(bytes, checksums)           the decode side verifies on its GPU, then the pages count
                                         as landed; any failure rejects the transfer

The copy runs on a stream of this sender's own, so it overlaps the engine's next step; the
pages it reads are complete (the engine read the first token back after writing them)."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
import torch

from kernels.page_copy import copy_pages, page_words
from services.engine.errors import KVTransferError
from services.kvtransfer import cuda_ipc_pool
from services.kvtransfer.device_checksum import page_checksums
from services.kvtransfer.pages import PageLayout, PageRun
from services.kvtransfer.transport import KVSender, TransferConfig, TransferReceipt
from services.rpc.tandem.v1 import worker_pb2
from services.security.cluster_token import aio_channel

log = logging.getLogger("tandem.kvtransfer")

_SERVICE = "/tandem.v1.KVTransfer/"


class KVControlChannel:
    """The unary control calls of a decode worker's KVTransfer server (asyncio)."""

    def __init__(self, address: str, config: TransferConfig) -> None:
        self.address = address
        self._channel = aio_channel(address, config.cluster_token)
        self._timeout_s = config.timeout_s
        self.export_pool = self._unary("ExportPool", worker_pb2.KVPoolExport)
        self.begin_write = self._unary("BeginWrite", worker_pb2.PushAck)
        self.end_write = self._unary("EndWrite", worker_pb2.PushAck)

    def _unary(self, method: str, response):
        call = self._channel.unary_unary(_SERVICE + method, request_serializer=lambda m: m.SerializeToString(),
                                         response_deserializer=response.FromString)

        async def invoke(request):
            try:
                return await call(request, timeout=self._timeout_s)
            except grpc.aio.AioRpcError as exc:
                raise KVTransferError(f"{method} to {self.address} failed: {exc.code().name} "
                                      f"{exc.details() or ''}".rstrip()) from None
        return invoke

    async def close(self) -> None:
        await self._channel.close()


async def probe_pool(control: KVControlChannel) -> worker_pb2.KVPoolExport:
    """The peer's export, or an unavailable one saying why (an older peer, a failed call)."""
    try:
        return await control.export_pool(worker_pb2.KVPoolRequest())
    except KVTransferError as exc:
        return worker_pb2.KVPoolExport(available=False, reason=str(exc))


def block_runs(src_ids, dst_ids) -> list[tuple[int, int, int]]:
    """(first source block, first destination block, count) for each run of pages whose source
    and destination blocks are both consecutive."""
    runs: list[list[int]] = []
    for s, d in zip(src_ids, dst_ids):
        if runs and runs[-1][0] + runs[-1][2] == s and runs[-1][1] + runs[-1][2] == d:
            runs[-1][2] += 1
        else:
            runs.append([s, d, 1])
    return [tuple(r) for r in runs]


def dst_runs(dst_ids) -> list[tuple[int, int, int]]:
    """(index in the transfer, first destination block, count) for each run of consecutive
    destination blocks."""
    return block_runs(range(len(dst_ids)), dst_ids)


class CudaIpcKVSender(KVSender):
    name = "cuda_ipc"

    def __init__(self, address: str, config: TransferConfig,
                 control: KVControlChannel | None = None,
                 export: worker_pb2.KVPoolExport | None = None) -> None:
        self.address = address
        self._config = config
        self._control = control or KVControlChannel(address, config)
        self._export = export
        self._remote: torch.Tensor | None = None
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._open_lock = asyncio.Lock()
        self._background: set[asyncio.Future] = set()

    async def remote_pool(self) -> torch.Tensor:
        """The decode worker's pool, mapped into this process (opened once)."""
        async with self._open_lock:
            if self._remote is None:
                if self._export is None:
                    self._export = await probe_pool(self._control)
                self._remote = await asyncio.to_thread(self._open_and_warm_up, self._export)
                log.info("cuda_ipc: mapped the KV pool of %s (%s, %d bytes) on %s", self.address,
                         list(self._export.pool_shape), self._export.pool_bytes, self._remote.device)
            return self._remote

    @staticmethod
    def _open_and_warm_up(export: worker_pb2.KVPoolExport) -> torch.Tensor:
        """Maps the pool, and compiles the page-copy kernel for its page size now, on two scratch
        pages, so that no transfer waits for the compiler (Triton caches it on disk as well)."""
        remote = cuda_ipc_pool.open_pool(export)
        words = page_words(remote)
        with torch.cuda.device(remote.device):
            scratch = torch.zeros((2, words.shape[1]), dtype=words.dtype, device=remote.device)
            one = torch.zeros(1, dtype=torch.int64, device=remote.device)
            copy_pages(scratch, one, scratch, one + 1)
            torch.cuda.synchronize(remote.device)
        return remote

    async def send_pages(self, run: PageRun) -> TransferReceipt:
        if run.kv_cache.device.type != "cuda":
            raise KVTransferError(f"request {run.request_id}: cuda_ipc: this pool is on "
                                  f"{run.kv_cache.device}, not a CUDA device")
        return await self.write_pages(run, await self.remote_pool())

    async def write_pages(self, run: PageRun, remote: torch.Tensor) -> TransferReceipt:
        """The transfer proper, into `remote` (the decode pool as mapped here)."""
        start = time.perf_counter()
        n = len(run.block_ids)
        dst_ids = run.dst_block_ids[:n]
        if not dst_ids:
            raise KVTransferError(f"request {run.request_id}: cuda_ipc needs the reserved block ids")
        layout = run.layout
        if PageLayout.of_pool(remote) != layout:
            raise KVTransferError(f"request {run.request_id}: page layout {layout} does not match the "
                                  f"decode pool's {PageLayout.of_pool(remote)}")
        if max(dst_ids) >= remote.shape[0]:
            raise KVTransferError(f"request {run.request_id}: block {max(dst_ids)} is outside the "
                                  f"decode pool's {remote.shape[0]} blocks")
        ack = await self._control.begin_write(worker_pb2.BeginWriteRequest(
            request_id=run.request_id, block_ids=dst_ids, num_tokens=run.num_tokens,
            dtype=layout.dtype, page_shape=list(layout.page_shape)))
        if not ack.ok:
            raise KVTransferError(f"request {run.request_id}: rejected by {self.address}: {ack.error}")
        # From here on the decode side holds the blocks for us: it must hear EndWrite, even if
        # this task is cancelled (the copy, once launched, runs to its end anyway).
        copy = asyncio.ensure_future(asyncio.to_thread(self._copy, run, remote, dst_ids))
        try:
            sums = await asyncio.shield(copy)
        except asyncio.CancelledError:
            task = asyncio.ensure_future(self._abandon_after(copy, run))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            raise
        except Exception as exc:
            await self._abandon(run, f"copy failed: {exc}")
            raise KVTransferError(f"request {run.request_id}: cuda_ipc copy failed: {exc}") from exc
        ack = await self._control.end_write(worker_pb2.EndWriteRequest(
            request_id=run.request_id, ok=True, checksums=sums, num_bytes=run.num_bytes))
        if not ack.ok:
            raise KVTransferError(f"request {run.request_id}: rejected by {self.address}: {ack.error}")
        return TransferReceipt(n, run.num_bytes, time.perf_counter() - start)

    def _copy(self, run: PageRun, remote: torch.Tensor, dst_ids) -> list[int]:
        """Runs in a thread: launch the copy (and the checksums) on our stream, wait for it."""
        src = run.kv_cache
        if not src.is_cuda:         # host pools (tests): the same steps, nothing to wait for
            return self._copy_on_current_stream(run, remote, dst_ids)
        stream = self._streams.get(src.device)
        if stream is None:
            stream = self._streams.setdefault(src.device, torch.cuda.Stream(src.device))
        with torch.cuda.device(src.device), torch.cuda.stream(stream):
            sums = self._copy_on_current_stream(run, remote, dst_ids)
            done = torch.cuda.Event()
            done.record(stream)
        done.synchronize()
        return sums

    def _copy_on_current_stream(self, run: PageRun, remote: torch.Tensor, dst_ids) -> list[int]:
        src = run.kv_cache
        src_ids = torch.tensor(run.block_ids, dtype=torch.int64, device=src.device)
        dst_index = torch.tensor(dst_ids, dtype=torch.int64, device=src.device)
        self._launch_copy(src, src_ids, remote, dst_index, run.block_ids, dst_ids)
        # Checksums of the sources, on the same stream: .tolist() waits for them (and the copy).
        return page_checksums(src, run.block_ids) if self._config.ipc_checksums else []

    def _launch_copy(self, src, src_ids, remote, dst_index, src_list, dst_list) -> None:
        """Same GPU: one page-copy kernel, every byte read once and written once. Another GPU:
        the kernel would write through a peer mapping that torch does not set up for memory
        opened by IPC, so the copy engines move the pages instead, as few large peer copies:
        the pages gathered in destination order on this GPU (local, at memory speed), then one
        peer copy per run of consecutive destination blocks."""
        if src.device == remote.device:
            copy_pages(page_words(src), src_ids, page_words(remote), dst_index)
            return
        runs = block_runs(src_list, dst_list)
        if len(runs) <= len(dst_runs(dst_list)):
            for s0, d0, count in runs:
                remote[d0:d0 + count].copy_(src[s0:s0 + count], non_blocking=True)
            return
        staged = src.index_select(0, src_ids)
        for first, d0, count in dst_runs(dst_list):
            remote[d0:d0 + count].copy_(staged[first:first + count], non_blocking=True)

    async def _abandon_after(self, copy: asyncio.Future, run: PageRun) -> None:
        try:
            await copy
        except Exception:
            pass
        await self._abandon(run, "the transfer was cancelled")

    async def _abandon(self, run: PageRun, why: str) -> None:
        try:
            await self._control.end_write(worker_pb2.EndWriteRequest(
                request_id=run.request_id, ok=False, error=why))
        except KVTransferError as exc:
            log.warning("cuda_ipc: could not release %s: %s", run.request_id, exc)

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._remote = None
        await self._control.close()
