"""`tandem serve` on the GPUs it is given, as a user runs it: with its defaults (Ray, 1 prefill +
1 decode) and with `--launcher process`, the tiny model and the 8B preset, colocated too. Each
case is held to one GPU (`--gpus 1`, what a one-GPU machine has anyway), so both workers share
it and split its memory; the workers' load reports show pools that fit their share.
`pytest -m gpu tests/gpu/test_serve_gpu.py`."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import threading
import urllib.request

import pytest
import torch

from orchestration.cluster import Cluster, ClusterConfig
from orchestration.gpus import local_gpus
from services.engine.config import EngineConfig
from services.engine.loader import load_tokenizer
from services.rpc.tandem.v1 import worker_pb2
from tests.helpers.workers import WorkerClients

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _read_until(proc: subprocess.Popen, pattern: str, timeout_s: float) -> re.Match:
    found: list[re.Match] = []

    def scan() -> None:
        for raw in proc.stdout:
            sys.stderr.write(raw.decode())
            match = re.search(pattern, raw.decode())
            if match:
                found.append(match)
                return
    reader = threading.Thread(target=scan, daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert found, f"no line matching {pattern!r} within {timeout_s}s (exit code {proc.poll()})"
    return found[0]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("launcher, mode, model", [
    ("ray", "disaggregated", "tiny-random"),
    ("ray", "disaggregated", "llama-3.1-8b-random"),
    ("process", "disaggregated", "tiny-random"),
    ("process", "disaggregated", "llama-3.1-8b-random"),
    ("process", "colocated", "llama-3.1-8b-random"),
])
def test_serve_on_one_gpu_answers(launcher, mode, model) -> None:
    if launcher == "ray":
        pytest.importorskip("ray")
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestration.cli", "serve", "--launcher", launcher, "--mode", mode,
         "--model", model, "--gpus", "1", "--grpc-port", "0", "--http-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        up = _read_until(proc, r"workers up and warmed up in ([\d.]+)s \((\w+); (.*)\): prefill", 800)
        assert "cuda:0" in up.group(3)
        url = _read_until(proc, r"HTTP (http://\S+);", 60).group(1)
        with urllib.request.urlopen(f"{url}/health", timeout=10) as reply:
            assert reply.status == 200
        body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 8, "temperature": 0,
                           "ignore_eos": True}).encode()
        request = urllib.request.Request(f"{url}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            assert json.load(reply)["usage"]["completion_tokens"] == 8
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(900)
def test_two_8b_workers_share_one_gpu_within_its_memory() -> None:
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = 0.85
    config = ClusterConfig(launcher="process", gpus=1, start_timeout_s=800,
                           engine=EngineConfig(model="llama-3.1-8b-random"))
    cluster = Cluster(config)
    handle = cluster.start()
    try:
        assert [p.device for p in cluster.placements] == ["cuda:0", "cuda:0"]
        model = load_tokenizer("llama-3.1-8b-random").config      # bf16, as served on a GPU
        reports = asyncio.run(_reports(handle))
        pool_bytes = 0
        for report in reports:
            assert report.num_blocks > 0 and report.max_model_len > 0
            pool_bytes += report.num_blocks * report.block_size * model.kv_bytes_per_token
        assert pool_bytes + 2 * model.weight_bytes <= fraction * total
        print(f"two 8B workers on one {total / 2**30:.1f} GiB card: pools "
              f"{[r.num_blocks for r in reports]} blocks, {pool_bytes / 2**30:.1f} GiB in all")
    finally:
        cluster.stop()


async def _reports(handle) -> list[worker_pb2.LoadReport]:
    clients = WorkerClients(handle.prefill_addresses[0], handle.decode_addresses[0])
    try:
        return [await clients.decode.Load(worker_pb2.LoadRequest()),
                await clients.prefill.Load(worker_pb2.LoadRequest())]
    finally:
        await clients.close()


def test_local_gpus_sees_the_cards() -> None:
    gpus = local_gpus()
    assert gpus.count == torch.cuda.device_count()
    smallest = min(torch.cuda.get_device_properties(i).total_memory for i in range(gpus.count))
    assert gpus.memory_bytes == pytest.approx(smallest, rel=0.05)     # NVML's total and CUDA's


def test_a_gpu_pool_stays_within_its_share_of_the_card() -> None:
    from services.engine.config import CacheConfig, ModelConfig
    from services.engine.kv_cache import KVCacheManager
    model = ModelConfig(architecture="LlamaForCausalLM", vocab_size=64, hidden_size=64,
                        intermediate_size=128, num_layers=4, num_heads=4, num_kv_heads=2,
                        head_dim=16, dtype="bfloat16")
    total = torch.cuda.mem_get_info(0)[1]
    held = torch.empty(2**30, dtype=torch.uint8, device="cuda:0")     # "weights": 1 GiB
    try:
        torch.cuda.empty_cache()
        used = torch.cuda.memory_reserved(0)                            # this process: >= 1 GiB
        kv = KVCacheManager(CacheConfig(gpu_memory_fraction=0.05), model, "cuda:0", torch.bfloat16)
        pool_bytes = kv.kv_cache.numel() * kv.kv_cache.element_size()
        block_bytes = pool_bytes // kv.num_blocks
        share = int(0.05 * total) - used
        assert share - block_bytes < pool_bytes <= share
        del kv
    finally:
        del held
        torch.cuda.empty_cache()
