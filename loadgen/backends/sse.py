"""Server-sent events: bytes in, the `data` payload of each complete event out."""

from __future__ import annotations

# A server that never ends a line (or an event) would otherwise grow the buffer without bound.
MAX_EVENT_BYTES = 16 * 2**20


class SSEError(ValueError):
    """The stream broke the SSE framing beyond repair (an event larger than MAX_EVENT_BYTES)."""


class SSEDecoder:
    """Incremental SSE parser (WHATWG rules for the `data` field: lines of one event join with
    "\\n", a blank line ends the event, comment lines start with ":"). Chunk boundaries may fall
    anywhere, even inside a line."""

    __slots__ = ("_pending", "_data", "_size")

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._size = 0                     # bytes in _data

    def feed(self, chunk: bytes) -> list[str]:
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > MAX_EVENT_BYTES:
            raise SSEError(f"an SSE line of more than {MAX_EVENT_BYTES} bytes")
        events: list[str] = []
        for line in lines:
            line = line.rstrip(b"\r")
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data).decode("utf-8", "replace"))
                    self._data, self._size = [], 0
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
                self._size += len(value)
                if self._size > MAX_EVENT_BYTES:
                    raise SSEError(f"an SSE event of more than {MAX_EVENT_BYTES} bytes")
        return events

    def flush(self) -> list[str]:
        """Events left when the stream ends without a final blank line."""
        events = self.feed(b"\n\n") if self._pending or self._data else []
        return events
