"""The engine process on a GPU: a colocated worker with engine_process streams the tokens of an
in-process engine, the engine process holds the GPU and the worker's own process never creates
a CUDA context, and a worker whose KV transports would need the pool refuses to start.
`pytest -m gpu tests/gpu/test_enginecore_gpu.py`."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from services.decode.worker import DecodeWorker
from services.engine.config import CacheConfig, EngineConfig
from services.engine.errors import ConfigError
from services.engine.sampling_params import SamplingParams
from services.worker.config import WorkerConfig
from tests.helpers.workers import WorkerClients, reference_tokens

pytestmark = [pytest.mark.gpu, pytest.mark.timeout(300),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CONFIG = EngineConfig(device="cuda", cache=CacheConfig(num_blocks=256))
PROMPT = list(range(3, 60))
PARAMS = SamplingParams(temperature=0.0, max_tokens=24)


def gpu_pids() -> set[int]:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    return {int(line) for line in out.split() if line.strip().isdigit()}


async def test_colocated_worker_with_its_engine_in_a_process_of_its_own() -> None:
    # Tests run before this one in the same process may have made it a CUDA context already:
    # then only the engine process's own context can be checked.
    had_context = os.getpid() in gpu_pids()
    worker = DecodeWorker(WorkerConfig(engine=CONFIG, colocated=True, engine_process=True))
    clients = WorkerClients(None, await worker.start("127.0.0.1"))
    try:
        tokens = await clients.colocated("g", PROMPT, PARAMS)
        pids = gpu_pids()
        assert worker.loop.pid in pids
        assert had_context or os.getpid() not in pids
    finally:
        await clients.close()
        await worker.stop()
    assert tokens == reference_tokens(CONFIG, PROMPT, PARAMS)


async def test_a_decode_worker_that_receives_pages_refuses_an_engine_process_on_a_gpu() -> None:
    worker = DecodeWorker(WorkerConfig(engine=CONFIG, engine_process=True))
    with pytest.raises(ConfigError, match="colocated workers only"):
        await worker.start("127.0.0.1")
    await worker.stop()
