"""Where a worker's engine runs: on a thread of the worker's process (EngineLoop), or with
`WorkerConfig.engine_process` in a process of its own (EngineCoreClient, docs/enginecore.md),
behind the same interface. Either way the worker gets its loop, the engine as it may read it
(`loop.engine`), and the prompt-token counter, with the loop started and the engine not yet
warmed up."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from services.engine.engine import LLMEngine
from services.engine.engine_loop import EngineLoop
from services.engine.errors import ConfigError
from services.enginecore.client import EngineCoreClient
from services.worker.config import WorkerConfig, worker_engine_config
from services.worker.prompt_counter import PromptTokenCounter


@dataclass
class HostedEngine:
    loop: Any              # EngineLoop | EngineCoreClient
    engine: Any            # LLMEngine | RemoteEngine
    prompt_counter: Any    # PromptTokenCounter | RemotePromptCounter


async def host_engine(config: WorkerConfig, name: str, engine: LLMEngine | None,
                      needs_pages: bool, on_exit: Callable[[str], None]) -> HostedEngine:
    """`needs_pages`: the worker's KV transports read or write the pool in this process (a
    prefill worker, a decode worker that is not colocated); an engine process shares its pool
    with this one only on CPU. `on_exit(reason)`: the engine process died (from another thread)."""
    if engine is not None or not config.engine_process:
        if engine is None:
            engine = await asyncio.to_thread(LLMEngine, worker_engine_config(config))
        counter = PromptTokenCounter.install(engine)
        loop = EngineLoop(engine, name)
        loop.start()
        return HostedEngine(loop, engine, counter)
    client = EngineCoreClient(worker_engine_config(config), name, on_exit=on_exit)
    await asyncio.to_thread(client.start)
    if needs_pages and client.engine.kv.kv_cache.device.type == "meta":
        client.stop()
        raise ConfigError("engine_process with a KV pool on a GPU serves colocated workers only: "
                          "the KV transports of prefill and decode workers need the pool in the "
                          "worker's own process")
    return HostedEngine(client, client.engine, client.engine.prompt_counter)


def exit_reporter(readiness, aio_loop: asyncio.AbstractEventLoop) -> Callable[[str], None]:
    """What a worker does when its engine process dies: stop serving (health NOT_SERVING, every
    call UNAVAILABLE) with the reason."""
    def report(reason: str) -> None:
        try:
            asyncio.run_coroutine_threadsafe(readiness.set_not_serving(reason), aio_loop)
        except RuntimeError:
            pass    # the worker's loop is closed: it stopped already
    return report
