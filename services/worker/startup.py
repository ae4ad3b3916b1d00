"""The one place a worker's engine warms up, and the start-up line every worker logs: where it
runs, what KV pool it took, and how long loading and warming up took."""

from __future__ import annotations

import logging
import time

from services.engine.engine_loop import EngineLoop

log = logging.getLogger("tandem.worker")


async def warm_up(loop: EngineLoop) -> float:
    """Runs the engine's warm-up on its engine thread (where its steps run, so compiled kernels
    and captured graphs belong to it), before any request; returns the seconds it took."""
    start = time.perf_counter()
    warm = getattr(loop.engine, "warm_up", None)    # LLMEngine.warm_up() -> seconds
    if warm is not None:
        await loop.call(warm)
    return time.perf_counter() - start


def log_ready(worker_id: str, address: str, engine, load_s: float, warm_s: float) -> None:
    kv = engine.kv
    pool_bytes = kv.kv_cache.numel() * kv.kv_cache.element_size()
    log.info("%s ready on %s: %s, KV pool %d blocks x %d tokens (%.2f GiB), max_model_len %d; "
             "start-up %.1fs (load %.1fs, warm-up %.1fs)", worker_id, address, engine.device,
             kv.num_blocks, kv.block_size, pool_bytes / 2**30, engine.max_model_len,
             load_s + warm_s, load_s, warm_s)
