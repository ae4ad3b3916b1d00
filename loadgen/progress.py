"""A progress line on stderr, redrawn at most a few times a second from a thread that only reads
counters, so it costs the event loops nothing."""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

REFRESH_S = 0.25


class ProgressLine:
    def __init__(self, label: str, total: int | None, read_done: Callable[[], int],
                 enabled: bool = True) -> None:
        self.label = label
        self.total = total
        self.read_done = read_done
        self.enabled = enabled and sys.stderr.isatty()     # no carriage-return litter in logs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = time.monotonic()

    def __enter__(self) -> "ProgressLine":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            if exc_type is None:
                self._draw(final=True)
            else:
                sys.stderr.write("\r\033[K")     # leave the error message alone on its line
                sys.stderr.flush()

    def _loop(self) -> None:
        while not self._stop.wait(REFRESH_S):
            self._draw()

    def _draw(self, final: bool = False) -> None:
        done = self.read_done()
        elapsed = time.monotonic() - self._t0
        if self.total:
            width = 30
            filled = min(width, int(width * done / self.total))
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
        else:
            bar = f"{done} done"
        sys.stderr.write(f"\r{self.label}: {bar} {elapsed:6.1f}s" + ("\n" if final else ""))
        sys.stderr.flush()
