"""Server-sent events: bytes in, the `data` payload of each complete event out."""

from __future__ import annotations


class SSEDecoder:
    """Incremental SSE parser (WHATWG rules for the `data` field: lines of one event join with
    "\\n", a blank line ends the event, comment lines start with ":"). Chunk boundaries may fall
    anywhere, even inside a line."""

    __slots__ = ("_pending", "_data")

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[str]:
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        events: list[str] = []
        for line in lines:
            line = line.rstrip(b"\r")
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data).decode("utf-8", "replace"))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events

    def flush(self) -> list[str]:
        """Events left when the stream ends without a final blank line."""
        events = self.feed(b"\n\n") if self._pending or self._data else []
        return events
