"""The one place a worker's engine warms up, and the start-up line every worker logs: where it
runs, what KV pool it took, and how long loading and warming up took."""

from __future__ import annotations

import logging
import time

import torch

from services.engine.config import CacheConfig
from services.engine.engine_loop import EngineLoop

log = logging.getLogger("tandem.worker")


async def warm_up(loop: EngineLoop) -> float:
    """Runs the engine's warm-up (LLMEngine.warm_up: kernels compiled, CUDA graphs
    captured) on its engine thread, where its steps run, before any request; returns the seconds
    it took."""
    start = time.perf_counter()
    await loop.call(loop.engine.warm_up)
    return time.perf_counter() - start


def log_ready(worker_id: str, address: str, engine, cache: CacheConfig, load_s: float,
              warm_s: float) -> None:
    kv = engine.kv
    pool_bytes = kv.kv_cache.numel() * kv.kv_cache.element_size()
    # An engine in its own process describes its device itself (CUDA is not initialised here).
    where = getattr(engine, "where", None) or device_text(engine.device, cache)
    log.info("%s ready on %s: %s, KV pool %d blocks x %d tokens (%.2f GiB), max_model_len %d; "
             "start-up %.1fs (load %.1fs, warm-up %.1fs)", worker_id, address,
             where, kv.num_blocks, kv.block_size, pool_bytes / 2**30,
             engine.max_model_len, load_s + warm_s, load_s, warm_s)


def device_text(device: torch.device, cache: CacheConfig) -> str:
    if device.type != "cuda":
        return str(device)
    share = (f"gpu_memory_bytes {cache.gpu_memory_bytes}" if cache.gpu_memory_bytes is not None
             else f"gpu_memory_fraction {cache.gpu_memory_fraction:.3g}")
    return f"{device} ({torch.cuda.get_device_name(device)}, {share})"
