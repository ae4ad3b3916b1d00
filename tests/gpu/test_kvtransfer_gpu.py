"""KV pages between pools on the GPU, with the same transports: grpc (gathered to the host, sent,
landed into device blocks) and local (device-to-device copies), bit-exact, at Llama-3.1-8B page
shapes in bf16. Run on the device machine: `pytest -m gpu tests/gpu/test_kvtransfer_gpu.py`."""

from __future__ import annotations

import pytest
import torch

from services.kvtransfer import KVReceiver, KVTransferServer, KVTransports, LocalEndpoints, PageRun
from services.kvtransfer import TransferConfig

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(120),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PAGE_SHAPE = (32, 2, 16, 8, 128)        # 2 MiB pages in bf16


def cuda_pool(num_blocks: int, fill: bool) -> torch.Tensor:
    pool = torch.zeros((num_blocks, *PAGE_SHAPE), dtype=torch.bfloat16, device="cuda")
    if fill:
        pool.normal_()
    return pool


@pytest.mark.parametrize("transport", ["grpc", "local"])
async def test_pages_between_gpu_pools_are_bit_exact(transport) -> None:
    src, dst = cuda_pool(12, fill=True), cuda_pool(16, fill=False)
    receiver = KVReceiver(dst, PAGE_SHAPE[2])
    server = KVTransferServer(receiver, TransferConfig())
    address = f"127.0.0.1:{server.start('127.0.0.1', 0)}"
    if transport == "local":
        LocalEndpoints.register(address, receiver)
    transports = KVTransports(TransferConfig())
    try:
        src_ids, dst_ids = (3, 0, 11, 7, 5), (15, 2, 9, 4, 1)
        inbox = receiver.expect("gpu", dst_ids)
        receipt = await transports.sender_for(address, transport).send_pages(
            PageRun("gpu", src, src_ids, num_tokens=5 * 16 - 3, dst_block_ids=dst_ids))
        assert inbox.landed.result(timeout=5) == 77
        torch.cuda.synchronize()
        for s, d in zip(src_ids, dst_ids):
            assert torch.equal(dst[d], src[s])
        untouched = [b for b in range(16) if b not in dst_ids]
        assert not dst[untouched].any()
        assert receipt.num_bytes == 5 * 2 * 2**20
    finally:
        LocalEndpoints.unregister(address)
        await transports.close()
        server.stop(None)
