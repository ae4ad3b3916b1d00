"""EngineCoreClient: an EngineLoop whose engine runs in a process of its own (core.py), so the
worker's gRPC front end keeps its interpreter lock to itself.

Same interface as services.engine.engine_loop.EngineLoop: `call(loop.engine.<method>, ...)`,
`add_request`, `add_prefilled_request`, `abort`, `start`, `stop`, `num_open_streams`, and
RequestStreams that end as they do in-process. One reader thread receives the engine's messages;
each step arrives as one message and is handed to each event loop in one callback, which feeds
the streams of its requests.

If the engine process dies, the reader sees the pipe close at once: every open stream and call
fails with EngineStoppedError (UNAVAILABLE at the worker's edge) and `on_exit(reason)` runs, so
the worker stops serving instead of hanging."""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

from services.engine.config import EngineConfig
from services.engine.engine_loop import _ABORTED, EngineStoppedError, RequestStream
from services.engine.errors import InvalidRequestError
from services.engine.outputs import RequestOutput
from services.engine.sampling_params import SamplingParams
from services.enginecore import messages as m
from services.enginecore.remote_engine import RemoteEngine, RemoteMethod

log = logging.getLogger("tandem.enginecore")


class EngineCoreClient:
    """`on_step(seconds, outputs)` runs on the reader thread after every step (metrics);
    `on_exit(reason)` once, on the reader thread, if the engine process ends unasked."""

    def __init__(self, config: EngineConfig, name: str = "engine",
                 on_step: Callable[[float, list[RequestOutput]], None] | None = None,
                 on_exit: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.name = name
        self.on_step = on_step
        self.on_exit = on_exit
        self.engine: RemoteEngine | None = None
        self.num_steps = 0
        self._streams: dict[str, RequestStream] = {}
        self._calls: dict[int, Future] = {}
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._stopping = False
        self._dead: str | None = None
        self._process = None
        self._conn = None
        self._reader: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout_s: float | None = None) -> None:
        """Starts the engine process and returns once its engine is built (blocking: run it in a
        thread from an event loop). A process that dies while loading raises EngineStoppedError,
        an engine that failed to build raises the engine's own error."""
        if self._process is not None:
            raise RuntimeError(f"{self.name} engine process already started")
        # A fresh interpreter (nothing of this process's CUDA state, no re-import of its main
        # module), linked by a socket pair whose other end only the engine process holds.
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "services.enginecore", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        theirs.close()
        self._conn = parent = Connection(ours.detach())
        try:
            # The authkey lets this process fetch the shared pool's descriptor from the engine's.
            parent.send((self.config, logging.getLogger().level,
                         bytes(multiprocessing.current_process().authkey)))
            if timeout_s is not None and not parent.poll(timeout_s):
                raise EngineStoppedError(f"{self.name}: the engine process did not start "
                                         f"within {timeout_s} s")
            first = m.unpack(parent.recv_bytes())
            if first[0] == "error":
                raise m.error_from_wire(*first[2:5])
            pool = parent.recv()
        except (EOFError, OSError):
            self._process.wait(5)
            raise EngineStoppedError(f"{self.name}: the engine process exited while starting "
                                     f"(exit code {self._process.returncode})") from None
        except BaseException:
            self._kill()
            raise
        self.engine = RemoteEngine(first[1], pool)
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-core-reader",
                                        daemon=True)
        self._reader.start()

    def stop(self) -> None:
        """Stops the engine process; every open stream ends with EngineStoppedError. Idempotent."""
        with self._state_lock:
            already, self._stopping = self._stopping, True
        if self._process is None or already:
            return
        try:
            self._send(["stop", 0])
        except EngineStoppedError:
            pass
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._kill()
        if self._reader is not None:
            self._reader.join(10)
        self._fail_all(EngineStoppedError(f"{self.name} stopped"))

    def _kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    # --- calls from any thread or event loop -----------------------------------------------------
    async def call(self, fn: RemoteMethod, *args: Any) -> Any:
        """Runs the engine method `fn` (a `loop.engine.<name>` handle) in the engine process,
        between two steps."""
        if not isinstance(fn, RemoteMethod):
            raise TypeError(f"only engine methods run in the engine process, not {fn!r}")
        return await asyncio.wrap_future(self._request(["call", fn.name, list(args)]))

    async def add_request(self, request_id: str, prompt_token_ids: Sequence[int],
                          params: SamplingParams, *, prefill_only: bool = False,
                          generated_token_ids: Sequence[int] = (),
                          room_tokens: int = 0) -> RequestStream:
        return await self._start_stream(request_id, [
            "add", request_id, list(prompt_token_ids), m.params_to_wire(params), prefill_only,
            list(generated_token_ids), room_tokens])

    async def add_prefilled_request(self, request_id: str, prompt_token_ids: Sequence[int],
                                    generated_token_ids: Sequence[int],
                                    params: SamplingParams) -> RequestStream:
        return await self._start_stream(request_id, [
            "add_prefilled", request_id, list(prompt_token_ids), list(generated_token_ids),
            m.params_to_wire(params)])

    async def abort(self, request_id: str) -> bool:
        """Frees what the request holds; its stream (if any) ends with `aborted` set."""
        stream = self._streams.pop(request_id, None)
        if stream is not None:
            _deliver(stream._loop, [(stream, _ABORTED)])
        return await asyncio.wrap_future(self._request(["abort", request_id]))

    @property
    def num_open_streams(self) -> int:
        return len(self._streams)

    async def _start_stream(self, request_id: str, command: list) -> RequestStream:
        if request_id in self._streams:
            raise InvalidRequestError("request_id", f"{request_id!r} is already running here")
        stream = RequestStream(request_id, asyncio.get_running_loop())
        self._streams[request_id] = stream
        try:
            await asyncio.wrap_future(self._request(command))
        except BaseException:
            if self._streams.get(request_id) is stream:
                del self._streams[request_id]
            raise
        return stream

    def _request(self, command: list) -> Future:
        future: Future = Future()
        call_id = next(self._ids)
        with self._state_lock:
            if self._dead is not None or self._stopping:
                future.set_exception(EngineStoppedError(self._dead or f"{self.name} stopped"))
                return future
            self._calls[call_id] = future
        command.insert(1, call_id)
        try:
            self._send(command)
        except EngineStoppedError as exc:
            with self._state_lock:
                self._calls.pop(call_id, None)
            if not future.done():
                future.set_exception(exc)
        return future

    def _send(self, command: list) -> None:
        data = m.pack(command)
        try:
            with self._send_lock:
                self._conn.send_bytes(data)
        except (OSError, ValueError):
            raise EngineStoppedError(f"{self.name}: the engine process is gone") from None

    # --- the reader thread -------------------------------------------------------------------------
    def _read(self) -> None:
        conn = self._conn
        try:
            while True:
                event = m.unpack(conn.recv_bytes())
                kind = event[0]
                if kind == "step":
                    self._on_step_message(event[1], event[2], event[3])
                elif kind == "result":
                    self.engine.update(event[3])
                    self._resolve(event[1], result=event[2])
                elif kind == "error":
                    self.engine.update(event[5])
                    self._resolve(event[1], error=m.error_from_wire(*event[2:5]))
                elif kind == "step_failed":
                    self._fail_streams(EngineStoppedError(f"{self.name} step failed: {event[1]}"))
        except (EOFError, OSError):
            pass
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            pass        # the pipe closed first: the exit code follows
        reason = f"{self.name}: the engine process exited (exit code {self._process.returncode})"
        with self._state_lock:
            self._dead = reason
            asked = self._stopping
        self._fail_all(EngineStoppedError(reason))
        if not asked:
            log.error("%s", reason)
            if self.on_exit is not None:
                self.on_exit(reason)

    def _resolve(self, call_id: int, result: Any = None, error: BaseException | None = None) -> None:
        with self._state_lock:
            future = self._calls.pop(call_id, None)
        if future is None or not future.set_running_or_notify_cancel():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _on_step_message(self, seconds: float, stats: list, wire_outputs: list) -> None:
        self.num_steps += 1
        self.engine.update(stats)
        outputs = [m.output_from_wire(f) for f in wire_outputs]
        if self.on_step is not None:
            try:
                self.on_step(seconds, outputs)
            except Exception:
                log.exception("%s: on_step failed (the outputs are still delivered)", self.name)
        # The step's outputs, fanned out: one callback per event loop.
        deliveries: dict[asyncio.AbstractEventLoop, list] = {}
        streams = self._streams
        for output in outputs:
            stream = (streams.pop(output.request_id, None) if output.finished
                      else streams.get(output.request_id))
            if stream is not None:
                deliveries.setdefault(stream._loop, []).append((stream, output))
        for loop, items in deliveries.items():
            _deliver(loop, items)

    def _fail_streams(self, error: BaseException) -> None:
        streams, self._streams = self._streams, {}
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for stream in streams.values():
            by_loop.setdefault(stream._loop, []).append((stream, error))
        for loop, items in by_loop.items():
            _deliver(loop, items)

    def _fail_all(self, error: BaseException) -> None:
        with self._state_lock:
            calls, self._calls = self._calls, {}
        for future in calls.values():
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
        self._fail_streams(error)


def _deliver(loop: asyncio.AbstractEventLoop, items: list) -> None:
    def push_all() -> None:
        for stream, item in items:
            stream._push(item)
    try:
        loop.call_soon_threadsafe(push_all)
    except RuntimeError:
        pass    # that event loop is closed: nobody is listening any more
