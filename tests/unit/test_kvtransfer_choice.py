"""Which transport carries pages (`auto`: local in one process, cuda_ipc on one node with CUDA,
grpc otherwise), and that forcing cuda_ipc where it cannot work is a clear error, not a hang."""

from __future__ import annotations

import pytest
import torch

from services.engine.errors import ConfigError, KVTransferError
from services.kvtransfer import KVReceiver, KVTransferServer, KVTransports, LocalEndpoints, PageRun
from services.kvtransfer import TransferConfig, cuda_ipc_pool
from services.kvtransfer.cuda_ipc_sender import KVControlChannel, probe_pool
from services.kvtransfer.factory import ipc_reason
from services.prefill.worker import PrefillWorker
from services.rpc.tandem.v1 import worker_pb2
from services.worker.config import WorkerConfig
from tests.helpers.workers import engine_config

PAGE_SHAPE = (2, 2, 4, 2, 8)
BLOCK = PAGE_SHAPE[2]


@pytest.fixture
def endpoint():
    receiver = KVReceiver(torch.zeros((8, *PAGE_SHAPE)), BLOCK)
    server = KVTransferServer(receiver, TransferConfig())
    address = f"127.0.0.1:{server.start('127.0.0.1', 0)}"
    yield receiver, address
    server.stop(None)


def _export(**fields) -> worker_pb2.KVPoolExport:
    base = dict(available=True, node_id="node-a/boot-1", device_uuid="GPU-1111", dtype="bfloat16",
                pool_shape=[8, *PAGE_SHAPE], pool_bytes=8 * 2 * 128 * 2)
    return worker_pb2.KVPoolExport(**{**base, **fields})


def test_ipc_needs_the_same_node_a_visible_gpu_and_a_cuda_pool_here() -> None:
    same = dict(this_node="node-a/boot-1", visible=("GPU-0000", "GPU-1111"))
    assert cuda_ipc_pool.unavailable_reason(_export(), **same) == ""
    assert ipc_reason(torch.device("cuda", 0), "") == ""
    assert "another node" in cuda_ipc_pool.unavailable_reason(_export(node_id="node-b/boot-9"), **same)
    assert "not visible" in cuda_ipc_pool.unavailable_reason(_export(device_uuid="GPU-2222"), **same)
    assert "no CUDA device" in cuda_ipc_pool.unavailable_reason(_export(), "node-a/boot-1", ())
    assert "on cpu" in cuda_ipc_pool.unavailable_reason(
        _export(available=False, reason="the KV pool is on cpu, not a CUDA device"), **same)
    assert "not a CUDA device" in ipc_reason(torch.device("cpu"), "")


def test_the_node_id_is_stable_and_names_this_host() -> None:
    import socket
    assert cuda_ipc_pool.node_id() == cuda_ipc_pool.node_id()
    assert cuda_ipc_pool.node_id().startswith(socket.gethostname() + "/")


async def test_a_cpu_pool_is_not_exported_and_says_why(endpoint) -> None:
    _, address = endpoint
    control = KVControlChannel(address, TransferConfig())
    try:
        export = await probe_pool(control)
    finally:
        await control.close()
    assert not export.available and "not a CUDA device" in export.reason
    assert export.node_id == cuda_ipc_pool.node_id()


async def test_auto_goes_local_in_one_process_and_grpc_to_a_cpu_pool(endpoint) -> None:
    receiver, address = endpoint
    transports = KVTransports()
    try:
        assert transports.sender_for(address, "auto").name == "auto"
        src = torch.randn((4, *PAGE_SHAPE))
        receiver.expect("a1", [5, 6])
        sender = transports.sender_for(address)            # "" is auto too: the same sender
        assert sender is transports.sender_for(address, "auto")
        await sender.send_pages(PageRun("a1", src, (3, 1), 2 * BLOCK, dst_block_ids=(5, 6)))
        assert sender.chosen.name == "grpc"
        assert torch.equal(receiver.kv_cache[5], src[3]) and torch.equal(receiver.kv_cache[6], src[1])
        LocalEndpoints.register(address, receiver)
        try:
            assert transports.sender_for(address).name == "local"
            assert transports.sender_for(address, "auto").name == "local"
        finally:
            LocalEndpoints.unregister(address)
    finally:
        await transports.close()


async def test_forcing_cuda_ipc_where_it_cannot_work_fails_with_the_reason(endpoint) -> None:
    receiver, address = endpoint
    transports = KVTransports()
    try:
        sender = transports.sender_for(address, "cuda_ipc")
        assert sender.name == "cuda_ipc"
        receiver.expect("f1", [0])
        with pytest.raises(KVTransferError, match="not a CUDA device"):
            await sender.send_pages(PageRun("f1", torch.zeros((2, *PAGE_SHAPE)), (0,), BLOCK,
                                            dst_block_ids=(0,)))
        with pytest.raises(KVTransferError, match="cuda_ipc: the KV pool is on cpu"):
            await sender.remote_pool()
        assert receiver.inbox("f1").total_pages == 0           # nothing was opened or written
    finally:
        await transports.close()


async def test_a_prefill_worker_forced_to_cuda_ipc_without_cuda_refuses_to_start() -> None:
    worker = PrefillWorker(WorkerConfig(engine=engine_config(num_blocks=8), kv_transport="cuda_ipc"))
    with pytest.raises(ConfigError, match="cuda_ipc needs the KV pool in CUDA memory"):
        await worker.start("127.0.0.1")
