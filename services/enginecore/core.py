"""The engine process: builds the LLMEngine (it alone initialises CUDA and owns the KV pool),
then serves the front end's commands between steps and sends one message per step.

It steps while it has work and blocks on the pipe when it has none; a command never waits behind
more than the step in flight. It ends on "stop", or when the pipe closes (the front end is gone:
no engine outlives its worker)."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import time
from multiprocessing.connection import Connection

from services.enginecore import messages as m

log = logging.getLogger("tandem.enginecore")

AFFINITY_SAMPLE = 4096          # the most recently cached block hashes a load report carries
HASHES_EVERY_S = 0.05           # how often a step message refreshes them (every reply does),
                                # when they changed since the last message that carried them


def run_engine_process(conn: Connection) -> None:
    """The engine process's entry point (`python -m services.enginecore FD`): its config comes
    first on the pipe."""
    # A Ctrl-C reaches the whole process group: the worker stops this process itself ("stop",
    # or the pipe closing), after its streams are done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        config, log_level, authkey = conn.recv()
    except (EOFError, OSError):
        return
    multiprocessing.current_process().authkey = authkey
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from services.engine.engine import LLMEngine
    from services.worker.prompt_counter import PromptTokenCounter
    from services.worker.startup import device_text
    try:
        engine = LLMEngine(config)
    except BaseException as exc:
        conn.send_bytes(m.pack(m.error_to_wire(0, exc)))
        return
    counter = PromptTokenCounter.install(engine)
    kv = engine.kv
    pool = kv.kv_cache
    shared_pool = None
    if pool.device.type == "cpu":
        pool.share_memory_()        # the front end maps the same pages (KV transports on CPU)
        shared_pool = pool
    info = {"block_size": kv.block_size, "num_blocks": kv.num_blocks,
            "max_model_len": engine.max_model_len, "device": str(engine.device),
            "where": device_text(engine.device, config.cache),
            "pool_bytes": pool.numel() * pool.element_size(),
            "pool_dtype": str(pool.dtype).removeprefix("torch."), "pool_shape": list(pool.shape)}
    conn.send_bytes(m.pack(["ready", info]))
    conn.send(shared_pool)          # pickled by multiprocessing: a shared-memory handle, or None
    EngineCore(engine, counter, conn).run()


class EngineCore:
    def __init__(self, engine, counter, conn: Connection) -> None:
        self.engine = engine
        self.counter = counter
        self.conn = conn
        self.streaming: set[str] = set()    # requests whose outputs the front end streams
        self._hashes_at = 0.0
        self._hashes_version = -1           # of the hashes the front end last received

    def run(self) -> None:
        engine, conn = self.engine, self.conn
        try:
            while True:
                if not engine.has_unfinished_requests():
                    conn.poll(None)             # idle: sleep until a command comes
                while conn.poll(0):
                    if not self._handle(m.unpack(conn.recv_bytes())):
                        return
                if engine.has_unfinished_requests():
                    self._step()
        except (EOFError, OSError):
            return                               # the front end is gone

    def _handle(self, cmd: list) -> bool:
        kind, call_id = cmd[0], cmd[1]
        if kind == "stop":
            return False
        engine = self.engine
        try:
            if kind == "add":
                _, _, rid, prompt, params, prefill_only, generated, room_tokens = cmd
                value = engine.add_request(rid, prompt, m.params_from_wire(params),
                                           prefill_only=prefill_only, generated_token_ids=generated,
                                           room_tokens=room_tokens)
                self.streaming.add(rid)
            elif kind == "add_prefilled":
                _, _, rid, prompt, generated, params = cmd
                value = engine.add_prefilled_request(rid, prompt, generated,
                                                     m.params_from_wire(params))
                self.streaming.add(rid)
            elif kind == "abort":
                self.streaming.discard(cmd[2])
                value = engine.abort(cmd[2])
            elif kind == "call" and cmd[2] in m.CALLABLE:
                value = getattr(engine, cmd[2])(*cmd[3])
            else:
                raise ValueError(f"unknown engine command {kind!r} {cmd[2:3]!r}")
            reply = ["result", call_id, value]
        except BaseException as exc:
            reply = m.error_to_wire(call_id, exc)
        reply.append(self._stats(hashes=True))  # after the call (a release frees blocks)
        self.conn.send_bytes(m.pack(reply))
        return True

    def _stats(self, hashes: bool = False) -> list:
        """running, waiting, free blocks, prompt tokens computed, and the cached block hashes
        (for prefix-affinity routing) when asked or due and changed since last sent, else None
        (the front end keeps the last ones: a new request's reply stays small)."""
        scheduler, kv = self.engine.scheduler, self.engine.kv
        now = time.monotonic()
        sample = None
        if ((hashes or now - self._hashes_at >= HASHES_EVERY_S)
                and kv.cached_hashes_version != self._hashes_version):
            sample, self._hashes_at = kv.cached_block_hashes()[-AFFINITY_SAMPLE:], now
            self._hashes_version = kv.cached_hashes_version
        return [len(scheduler.running), len(scheduler.waiting), kv.num_free_blocks,
                self.counter.prompt_tokens, sample]

    def _step(self) -> None:
        start = time.perf_counter()
        try:
            outputs = self.engine.step()
        except Exception as exc:
            # As in-process: fail what was running, keep serving.
            log.exception("engine step failed")
            streaming, self.streaming = self.streaming, set()
            for rid in streaming:
                self.engine.abort(rid)
            self.conn.send_bytes(m.pack(["step_failed", repr(exc)]))
            return
        for o in outputs:
            if o.finished:
                self.streaming.discard(o.request_id)
        self.conn.send_bytes(m.pack(["step", time.perf_counter() - start, self._stats(),
                                     [m.output_to_wire(o) for o in outputs]]))
