"""A gateway in front of real prefill/decode workers, all in this process on loopback with free
ports: each worker on its own thread and event loop (services/worker/hosting.py), the gateway on
the test's loop. `blocks_all_free` proves nothing leaked on any worker. With `local_calls`, the
gateway calls the workers' servicers directly (services/worker/local_calls.py), as `tandem serve
--launcher inprocess` does, instead of over loopback gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from services.decode.worker import DecodeWorker
from services.engine.config import CacheConfig, EngineConfig, SchedulerConfig
from services.gateway.config import AdmissionConfig, GatewayConfig
from services.gateway.gateway import Gateway
from services.kvtransfer import TransferConfig
from services.prefill.worker import PrefillWorker
from services.worker.config import WorkerConfig
from services.worker.hosting import WorkerThread

HOST = "127.0.0.1"


def engine_config(num_blocks: int = 256, max_num_seqs: int = 64, max_model_len: int | None = None) -> EngineConfig:
    return EngineConfig(cache=CacheConfig(num_blocks=num_blocks),
                        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=256,
                                                  max_model_len=max_model_len))


@dataclass
class GatewayCluster:
    gateway: Gateway
    prefill: list[WorkerThread] = field(default_factory=list)
    decode: list[WorkerThread] = field(default_factory=list)

    @property
    def workers(self) -> list[WorkerThread]:
        return self.prefill + self.decode

    def free_blocks(self) -> list[tuple[int, int]]:
        """(free, total) blocks of every worker, read on the worker's own loop."""
        out = []
        for t in self.workers:
            kv = t.worker.engine.kv
            out.append(t.run(t.worker.loop.call(lambda kv=kv: (kv.num_free_blocks, kv.num_blocks)), 5))
        return out

    async def blocks_all_free(self, within_s: float = 2.0) -> bool:
        """Every block free on every worker (within a short grace for in-flight cancels), and the
        block pools' own integrity checks pass."""
        deadline = time.monotonic() + within_s
        while True:
            usage = await asyncio.to_thread(self.free_blocks)
            if all(free == total for free, total in usage):
                break
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        for t in self.workers:
            t.run(t.worker.loop.call(t.worker.engine.kv.check_integrity), 5)
        return True


@contextlib.asynccontextmanager
async def gateway_cluster(mode: str = "disaggregated", *, kv_transport: str = "", num_prefill: int = 1,
                          num_decode: int = 1, engine: EngineConfig | None = None,
                          decode_engine: EngineConfig | None = None,
                          admission: AdmissionConfig | None = None, shutdown_grace_s: float = 1.0,
                          transfer: TransferConfig | None = None, local_calls: bool = False,
                          **gateway_fields) -> AsyncIterator[GatewayCluster]:
    engine = engine or engine_config()
    decode_engine = decode_engine or engine
    colocated = mode == "colocated"
    transfer = transfer or TransferConfig()
    threads: list[WorkerThread] = []
    cluster = None
    try:
        decode = [WorkerThread(DecodeWorker(WorkerConfig(engine=decode_engine, colocated=colocated,
                                                         shutdown_grace_s=shutdown_grace_s,
                                                         transfer=transfer)),
                               f"decode-{i}") for i in range(num_decode)]
        prefill = [] if colocated else [
            WorkerThread(PrefillWorker(WorkerConfig(engine=engine, shutdown_grace_s=shutdown_grace_s,
                                                    transfer=transfer)),
                         f"prefill-{i}") for i in range(num_prefill)]
        for t in decode + prefill:
            threads.append(t)
            await asyncio.to_thread(t.start, HOST, 0)
        config = GatewayConfig(mode=mode, decode_workers=tuple(t.address for t in decode),
                               prefill_workers=tuple(t.address for t in prefill), host=HOST,
                               grpc_port=0, http_port=0, kv_transport=kv_transport,
                               admission=admission or AdmissionConfig(),
                               **{"worker_ready_timeout_s": 30.0, **gateway_fields})
        local = {t.address: t.local() for t in threads} if local_calls else {}
        gateway = Gateway(config, local.get)
        await gateway.start()
        cluster = GatewayCluster(gateway, prefill, decode)
        yield cluster
    finally:
        if cluster is not None:
            await cluster.gateway.stop()
        for t in threads:
            await asyncio.to_thread(t.stop)


def replace_engine(config: EngineConfig, **scheduler) -> EngineConfig:
    return dataclasses.replace(config, scheduler=dataclasses.replace(config.scheduler, **scheduler))
