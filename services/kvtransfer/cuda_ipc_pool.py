"""A decode worker's KV pool shared through CUDA IPC: exported once per asking peer, opened once
per peer by the prefill worker, which then writes pages straight into it.

The export is torch's own description of a CUDA storage for another process
(`torch.multiprocessing.reductions.reduce_tensor` -> `storage._share_cuda_()`: the cudaMalloc
block's IPC handle, the storage's offset in it, a shared reference counter that keeps the block
alive while a peer holds it, and an event the opener waits on), sent field by field in a
KVPoolExport message (no pickle crosses the wire). The opener rebuilds it with torch's
`rebuild_cuda_tensor`, which caches the mapping per handle as CUDA requires (a handle opens once
per process). What is shared is a flat uint8 view of the pool; the opener reshapes it.

Device indices differ between processes (CUDA_VISIBLE_DEVICES), so the export names its GPU by
UUID and the opener finds its own index for it; a GPU the opener cannot see, or another node,
makes cuda_ipc unavailable with a reason, never a hang."""

from __future__ import annotations

import functools
import socket

import torch
from torch.multiprocessing.reductions import rebuild_cuda_tensor, reduce_tensor

from services.engine.errors import KVTransferError
from services.kvtransfer.pages import DTYPES, PageLayout, dtype_name
from services.rpc.tandem.v1 import worker_pb2


@functools.lru_cache(maxsize=1)
def node_id() -> str:
    """This machine, as two processes on it agree and two machines do not: host name + boot id."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def device_uuid(device: torch.device) -> str:
    props = torch.cuda.get_device_properties(device)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        return str(uuid)
    return f"pci:{getattr(props, 'pci_domain_id', 0)}:{getattr(props, 'pci_bus_id', 0)}:" \
           f"{getattr(props, 'pci_device_id', 0)}"


def local_device_for(uuid: str) -> torch.device | None:
    """This process's index for the GPU with that UUID, if it can see it."""
    if not torch.cuda.is_available():
        return None
    for i in range(torch.cuda.device_count()):
        if device_uuid(torch.device("cuda", i)) == uuid:
            return torch.device("cuda", i)
    return None


def export_pool(kv_cache: torch.Tensor) -> worker_pb2.KVPoolExport:
    """The pool's IPC description; `available=False` with a reason when it cannot be shared.
    Each call takes a fresh reference for the peer that asked (torch counts them)."""
    if kv_cache.device.type != "cuda":
        return worker_pb2.KVPoolExport(available=False, node_id=node_id(),
                                       reason=f"the KV pool is on {kv_cache.device}, not a CUDA device")
    if not kv_cache.is_contiguous():
        return worker_pb2.KVPoolExport(available=False, node_id=node_id(),
                                       reason="the KV pool is not contiguous")
    flat = kv_cache.detach().reshape(-1).view(torch.uint8)
    _, args = reduce_tensor(flat)
    (_cls, _size, _stride, tensor_offset, _storage_cls, _dtype, _device, handle, storage_size,
     storage_offset, _grad, ref_handle, ref_offset, event_handle, event_sync) = args
    return worker_pb2.KVPoolExport(
        available=True, node_id=node_id(), device_uuid=device_uuid(kv_cache.device),
        dtype=dtype_name(kv_cache.dtype), pool_shape=list(kv_cache.shape),
        ipc_handle=handle, storage_size_bytes=storage_size, storage_offset_bytes=storage_offset,
        tensor_offset=tensor_offset, ref_counter_handle=ref_handle or b"",
        ref_counter_offset=ref_offset or 0, event_handle=event_handle or b"",
        event_sync_required=bool(event_sync), pool_bytes=flat.numel())


def visible_device_uuids() -> tuple[str, ...]:
    if not torch.cuda.is_available():
        return ()
    return tuple(device_uuid(torch.device("cuda", i)) for i in range(torch.cuda.device_count()))


def unavailable_reason(export: worker_pb2.KVPoolExport, this_node: str | None = None,
                       visible: tuple[str, ...] | None = None) -> str:
    """Why this process cannot open the export ("" when it can). `this_node` and `visible` (the
    UUIDs of the GPUs this process sees) default to this process's own."""
    this_node = node_id() if this_node is None else this_node
    visible = visible_device_uuids() if visible is None else visible
    if not export.available:
        return export.reason or "the decode worker does not export its pool"
    if export.node_id != this_node:
        return f"the decode worker is on another node ({export.node_id}, this is {this_node})"
    if not visible:
        return "this process has no CUDA device"
    if export.device_uuid not in visible:
        return f"the decode worker's GPU {export.device_uuid} is not visible to this process"
    return ""


def open_pool(export: worker_pb2.KVPoolExport) -> torch.Tensor:
    """The peer's pool as a tensor of its shape and dtype, mapped into this process (on the
    peer's GPU as this process numbers it). Raises KVTransferError if it cannot be opened."""
    reason = unavailable_reason(export)
    if reason:
        raise KVTransferError(f"cuda_ipc: {reason}")
    device = local_device_for(export.device_uuid)
    layout = PageLayout(export.dtype, tuple(export.pool_shape[1:]))
    try:
        flat = rebuild_cuda_tensor(
            torch.Tensor, torch.Size([export.pool_bytes]), (1,), export.tensor_offset,
            torch.storage.TypedStorage, torch.uint8, device.index, export.ipc_handle,
            export.storage_size_bytes, export.storage_offset_bytes, False,
            # torch's _new_shared_cuda type-checks these: bytes, int, bytes, bool
            export.ref_counter_handle, export.ref_counter_offset, export.event_handle,
            bool(export.event_sync_required))
    except Exception as exc:        # CUDA refuses the handle: say so, the caller falls back or fails
        raise KVTransferError(f"cuda_ipc: cannot open the decode worker's pool: {exc}") from None
    expected = export.pool_shape[0] * layout.page_bytes
    if flat.numel() != expected:
        raise KVTransferError(f"cuda_ipc: the mapped pool has {flat.numel()} bytes, its shape "
                              f"{list(export.pool_shape)} needs {expected}")
    return flat.view(DTYPES[export.dtype]).view(tuple(export.pool_shape))
