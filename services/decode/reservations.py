"""A decode worker's reservations: blocks promised to a request before its prefill starts, an
inbox waiting for its pages, and a deadline. Every way out frees the blocks exactly once: the
request joins the batch (`claim`), is cancelled, its transfer is rejected, or the deadline passes
(the reaper). Once pages have landed the deadline restarts, giving the Decode call a full ttl.
While the request waits (for a prefill slot, for its transfer), its owner renews the lease
(`renew`, the DecodeWorker.Renew RPC), so a long prefill queue never expires an admitted request;
an owner that is gone stops renewing and the blocks come back after one ttl."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from services.engine.engine_loop import EngineLoop
from services.engine.errors import ReservationError
from services.kvtransfer import KVReceiver, PageInbox
from services.kvtransfer.inbox import InboxState

log = logging.getLogger("tandem.decode")


@dataclass
class Reservation:
    request_id: str
    block_ids: tuple[int, ...]
    inbox: PageInbox
    ttl_s: float
    deadline: float
    extended: bool = False


class ReservationBook:
    def __init__(self, loop: EngineLoop, receiver: KVReceiver, write_timeout_s: float = 60.0) -> None:
        self._engine_loop = loop
        self._receiver = receiver
        self._write_timeout_s = write_timeout_s
        self._reservations: dict[str, Reservation] = {}
        self.num_expired = 0
        self.num_renewed = 0
        # Kept as a running total: the engine thread reads it for metrics while this book changes.
        self.num_reserved_blocks = 0

    async def reserve(self, request_id: str, num_tokens: int, ttl_s: float) -> Reservation | None:
        engine = self._engine_loop.engine
        block_ids = await self._engine_loop.call(engine.reserve, request_id, num_tokens)
        if block_ids is None:
            return None
        inbox = self._receiver.expect(request_id, block_ids)
        reservation = Reservation(request_id, tuple(block_ids), inbox, ttl_s, time.monotonic() + ttl_s)
        self._reservations[request_id] = reservation
        self.num_reserved_blocks += len(block_ids)
        return reservation

    def get(self, request_id: str) -> Reservation:
        reservation = self._reservations.get(request_id)
        if reservation is None:
            raise ReservationError(f"request {request_id!r} has no live reservation here "
                                   "(expired, cancelled, or never made)")
        return reservation

    def claim(self, request_id: str) -> Reservation:
        """Takes the reservation out of the book: its blocks now belong to the request joining
        the batch, so neither the reaper nor a cancel frees them from here."""
        reservation = self.get(request_id)
        del self._reservations[request_id]
        self.num_reserved_blocks -= len(reservation.block_ids)
        self._receiver.discard(request_id)
        return reservation

    def renew(self, request_ids, ttl_s: float) -> list[str]:
        """Each named reservation now lapses ttl_s from now (never sooner than it would have);
        returns the ids that have no live reservation here."""
        deadline = time.monotonic() + ttl_s
        missing = []
        for request_id in request_ids:
            reservation = self._reservations.get(request_id)
            if reservation is None:
                missing.append(request_id)
            else:
                reservation.deadline = max(reservation.deadline, deadline)
        self.num_renewed += len(request_ids) - len(missing)
        return missing

    async def cancel(self, request_id: str) -> bool:
        """Frees the reservation's blocks; a transfer in progress is rejected. Idempotent."""
        reservation = self._reservations.pop(request_id, None)
        if reservation is None:
            return False
        self.num_reserved_blocks -= len(reservation.block_ids)
        inbox = self._receiver.discard(request_id)  # after this no transport of ours writes there
        if inbox is not None and not inbox.idle:
            # Another process is still copying into the blocks (CUDA IPC): they are not free
            # until it is done (EndWrite), or, should it never say so, after the write timeout.
            if not await asyncio.to_thread(inbox.wait_idle, self._write_timeout_s):
                log.warning("request %s: no end of its CUDA IPC write after %.0fs; freeing its "
                            "blocks anyway", request_id, self._write_timeout_s)
        await self._engine_loop.call(self._engine_loop.engine.cancel_reservation, request_id)
        return True

    async def reap(self) -> int:
        now = time.monotonic()
        expired = []
        for reservation in self._reservations.values():
            if reservation.inbox.state == InboxState.LANDED and not reservation.extended:
                reservation.deadline, reservation.extended = now + reservation.ttl_s, True
            elif now >= reservation.deadline:
                expired.append(reservation.request_id)
        for request_id in expired:
            if await self.cancel(request_id):
                self.num_expired += 1
        return len(expired)

    async def run_reaper(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.reap()

    async def cancel_all(self) -> None:
        for request_id in list(self._reservations):
            await self.cancel(request_id)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._reservations
