"""The receiving side shared by every transport: a decode worker's reserved blocks, by request id,
waiting for their pages.

Pages are written straight into the reserved blocks as they arrive and verified at the end
(lengths, and a checksum per page where bytes crossed a wire). A rejected transfer leaves nothing
behind: the inbox closes with the error and its owner frees the reservation. Writes and `close()`
take the same lock, so once `close()` returns no transport touches those blocks again and they can
be handed to another request."""

from __future__ import annotations

import enum
import threading
from concurrent.futures import Future
from typing import Callable, Sequence

import numpy as np
import torch

from services.engine.errors import KVTransferError
from services.kvtransfer import checksums
from services.kvtransfer.pages import PageLayout


class InboxState(enum.IntEnum):
    EXPECTING = 0
    RECEIVING = 1
    LANDED = 2
    CLOSED = 3


class PageInbox:
    """Reserved blocks of one request. `landed` resolves to the number of tokens whose K/V arrived,
    or fails with KVTransferError when the transfer was rejected or the inbox closed.

    A transfer may arrive as several stripes (consecutive runs of its pages, on parallel streams);
    each announces the whole transfer (total pages, tokens) and its own part. The pages have
    landed when every page's stripe has finished."""

    def __init__(self, request_id: str, kv_cache: torch.Tensor, block_ids: Sequence[int],
                 block_size: int) -> None:
        self.request_id = request_id
        self.block_ids = tuple(block_ids)
        self.layout = PageLayout.of_pool(kv_cache)
        self.landed: Future[int] = Future()
        self._kv_cache = kv_cache
        self._block_size = block_size
        self._lock = threading.Lock()
        self.state = InboxState.EXPECTING
        self._total_pages = 0
        self._num_tokens = 0
        self._opened: set[int] = set()      # pages some stripe has announced
        self._finished: set[int] = set()    # pages landed and verified
        # Set while no other process is writing into the blocks (CUDA IPC): the blocks may be
        # handed to another request only then, whatever state the inbox is in.
        self._idle = threading.Event()
        self._idle.set()

    # --- a transfer, from its header(s) to its end -----------------------------------------------
    def open(self, layout: PageLayout, first_page: int, num_pages: int, total_pages: int,
             num_tokens: int, dst_block_ids: Sequence[int] = ()) -> None:
        """Accepts one stripe's header; raises KVTransferError (and closes) if it cannot land here."""
        with self._lock:
            if self.state not in (InboxState.EXPECTING, InboxState.RECEIVING):
                raise KVTransferError(f"request {self.request_id}: inbox is {self.state.name.lower()}, "
                                      "not expecting pages")
            error = self._header_error(layout, first_page, num_pages, total_pages, num_tokens,
                                       tuple(dst_block_ids))
            if error:
                self._close_locked(KVTransferError(f"request {self.request_id}: {error}"))
                raise self.landed.exception()
            self.state = InboxState.RECEIVING
            self._total_pages, self._num_tokens = total_pages, num_tokens
            self._opened.update(range(first_page, first_page + num_pages))

    def _header_error(self, layout: PageLayout, first_page: int, num_pages: int, total_pages: int,
                      num_tokens: int, dst_block_ids: tuple[int, ...]) -> str | None:
        if layout != self.layout:
            return f"page layout {layout} does not match this pool's {self.layout}"
        if not 1 <= total_pages <= len(self.block_ids):
            return f"num_pages must be in [1, {len(self.block_ids)}] (reserved), got {total_pages}"
        if not (total_pages - 1) * self._block_size < num_tokens <= total_pages * self._block_size:
            return f"num_tokens {num_tokens} does not fill {total_pages} pages of {self._block_size}"
        if self.state == InboxState.RECEIVING and (total_pages, num_tokens) != (
                self._total_pages, self._num_tokens):
            return "stripes disagree on the transfer's pages or tokens"
        stripe = range(first_page, first_page + num_pages)
        if num_pages < 1 or first_page < 0 or stripe.stop > total_pages:
            return f"stripe of pages [{first_page}, {stripe.stop}) is outside the {total_pages} pages"
        if self._opened.intersection(stripe):
            return f"pages [{first_page}, {stripe.stop}) announced twice"
        if dst_block_ids and dst_block_ids != self.block_ids[first_page:stripe.stop]:
            return "block ids do not match the reservation"
        return None

    def write(self, page_index: int, offset: int, data: memoryview) -> None:
        """Writes bytes of one page (offset within the page) into its reserved block."""
        with self._lock:
            if self.state != InboxState.RECEIVING:
                raise KVTransferError(f"request {self.request_id}: inbox is {self.state.name.lower()}")
            if page_index not in self._opened or offset + len(data) > self.layout.page_bytes:
                raise KVTransferError(f"request {self.request_id}: bytes beyond page {page_index}")
            page = self._kv_cache[self.block_ids[page_index]].view(torch.uint8).reshape(-1)
            src = np.frombuffer(data, dtype=np.uint8)
            if page.device.type == "cpu":
                page.numpy()[offset:offset + len(data)] = src
            else:
                page[offset:offset + len(data)].copy_(torch.from_numpy(src.copy()))

    def copy_pages(self, first_page: int, src_pool: torch.Tensor, src_block_ids: Sequence[int]) -> None:
        """Same-process landing: one copy per page from the sender's pool, no serialization."""
        with self._lock:
            stripe = range(first_page, first_page + len(src_block_ids))
            if self.state != InboxState.RECEIVING or not self._opened.issuperset(stripe):
                raise KVTransferError(f"request {self.request_id}: cannot land pages {stripe} in a "
                                      f"{self.state.name.lower()} inbox")
            # One copy per page straight into its block (pages are large and contiguous); a
            # gather + scatter would copy every byte twice.
            for page, src in zip(stripe, src_block_ids):
                self._kv_cache[self.block_ids[page]].copy_(src_pool[src])

    def finish(self, first_page: int, num_pages: int) -> int:
        """Marks a stripe landed (after the transport verified it); returns its bytes. The inbox
        is landed once every page is."""
        with self._lock:
            stripe = range(first_page, first_page + num_pages)
            if self.state != InboxState.RECEIVING or not self._opened.issuperset(stripe):
                raise KVTransferError(f"request {self.request_id}: inbox is {self.state.name.lower()}")
            self._finished.update(stripe)
            if len(self._finished) == self._total_pages:
                self.state = InboxState.LANDED
                self.landed.set_result(self._num_tokens)
            return num_pages * self.layout.page_bytes

    # --- a writer in another process (CUDA IPC) --------------------------------------------------
    def begin_remote_write(self, layout: PageLayout, num_pages: int, num_tokens: int,
                           dst_block_ids: Sequence[int]) -> None:
        """Another process is about to write all num_pages pages straight into the blocks: opens
        the whole transfer as one stripe and marks the blocks busy until end_remote_write."""
        with self._lock:
            if not self._idle.is_set():
                raise KVTransferError(f"request {self.request_id}: a writer is already active")
        self.open(layout, 0, num_pages, num_pages, num_tokens, dst_block_ids)
        with self._lock:
            if self.state != InboxState.RECEIVING:
                raise KVTransferError(f"request {self.request_id}: inbox is {self.state.name.lower()}")
            self._idle.clear()

    def end_remote_write(self) -> None:
        """The writer is done with the blocks (finished, failed, or gone). Idempotent."""
        self._idle.set()

    @property
    def total_pages(self) -> int:
        """Pages the transfer announced (0 before its first header)."""
        return self._total_pages

    @property
    def idle(self) -> bool:
        return self._idle.is_set()

    def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no other process writes into the blocks; False if timeout_s passed first."""
        return self._idle.wait(timeout_s)

    def close(self, error: KVTransferError | None = None) -> None:
        """No more writes; a transfer not yet landed fails with error. Idempotent. A writer in
        another process may still be copying: free the blocks only once `idle`."""
        with self._lock:
            self._close_locked(error or KVTransferError(f"request {self.request_id}: reservation closed"))

    def _close_locked(self, error: KVTransferError) -> None:
        if self.state == InboxState.CLOSED:
            return
        if self.state != InboxState.LANDED:
            self.landed.set_exception(error)
        self.state = InboxState.CLOSED


class PageChecker:
    """Running per-page checksums over a byte stream of concatenated pages, in order."""

    def __init__(self, page_bytes: int, num_pages: int, checksum: str = checksums.DEFAULT) -> None:
        self.page_bytes = page_bytes
        self.num_pages = num_pages
        self._running = [checksums.running(checksum) for _ in range(num_pages)]
        self.received = 0

    @property
    def digests(self) -> list[int]:
        return [h.intdigest() for h in self._running]

    @property
    def total_bytes(self) -> int:
        return self.page_bytes * self.num_pages

    def split(self, offset: int, data: memoryview):
        """Yields (page index, offset in page, bytes) for a frame at this stream offset, updating
        the checksums. Frames must arrive in order, without gaps or overlap."""
        if offset != self.received:
            raise KVTransferError(f"frame at byte {offset}, expected {self.received}")
        if offset + len(data) > self.total_bytes:
            raise KVTransferError(f"frame ends at byte {offset + len(data)}, beyond the "
                                  f"{self.total_bytes} announced")
        pos = 0
        while pos < len(data):
            page, in_page = divmod(offset + pos, self.page_bytes)
            n = min(len(data) - pos, self.page_bytes - in_page)
            piece = data[pos:pos + n]
            self._running[page].update(piece)
            yield page, in_page, piece
            pos += n
        self.received += len(data)

    def verify(self, page_checksums: Sequence[int], total_bytes: int) -> None:
        if total_bytes != self.total_bytes or self.received != self.total_bytes:
            raise KVTransferError(f"truncated: {self.received} of {self.total_bytes} bytes arrived "
                                  f"(sender says {total_bytes})")
        if len(page_checksums) != self.num_pages:
            raise KVTransferError(f"{len(page_checksums)} checksums for {self.num_pages} pages")
        bad = [i for i, (got, want) in enumerate(zip(self.digests, page_checksums)) if got != want]
        if bad:
            raise KVTransferError(f"checksum mismatch on pages {bad}")


class KVReceiver:
    """All inboxes of one decode worker, keyed by request id. Every transport lands through it.

    `on_closed(request_id)` runs (in whichever thread closed it) when an inbox closes without its
    pages having landed for good, so the owner frees the reservation."""

    def __init__(self, kv_cache: torch.Tensor, block_size: int,
                 on_failed: Callable[[str], None] | None = None) -> None:
        self.kv_cache = kv_cache
        self.block_size = block_size
        self.bytes_received = 0
        self._on_failed = on_failed
        self._inboxes: dict[str, PageInbox] = {}
        self._lock = threading.Lock()

    def expect(self, request_id: str, block_ids: Sequence[int]) -> PageInbox:
        inbox = PageInbox(request_id, self.kv_cache, block_ids, self.block_size)
        with self._lock:
            if request_id in self._inboxes:
                raise KVTransferError(f"request {request_id}: already expecting pages")
            self._inboxes[request_id] = inbox
        if self._on_failed is not None:
            inbox.landed.add_done_callback(
                lambda f: f.exception() is not None and self._on_failed(request_id))
        return inbox

    def inbox(self, request_id: str) -> PageInbox:
        with self._lock:
            inbox = self._inboxes.get(request_id)
        if inbox is None:
            raise KVTransferError(f"request {request_id}: no reservation expects pages")
        return inbox

    def discard(self, request_id: str) -> PageInbox | None:
        """Forgets the inbox and closes it (a transfer in progress is rejected)."""
        with self._lock:
            inbox = self._inboxes.pop(request_id, None)
        if inbox is not None:
            inbox.close()
        return inbox

    def count_landed(self, num_bytes: int) -> None:
        with self._lock:
            self.bytes_received += num_bytes

    def __len__(self) -> int:
        return len(self._inboxes)
