"""Per-page checksums, named on the wire so both ends agree. xxh3_64 is the default: it runs at
memory speed (tens of GB/s), where zlib's crc32 (kept for interoperability) would cap a transfer
at a few GB/s on its own."""

from __future__ import annotations

import zlib
from typing import Callable

import xxhash

DEFAULT = "xxh3_64"


class _Crc32:
    def __init__(self) -> None:
        self._value = 0

    def update(self, data) -> None:
        self._value = zlib.crc32(data, self._value)

    def intdigest(self) -> int:
        return self._value


CHECKSUMS: dict[str, Callable[[], object]] = {"xxh3_64": xxhash.xxh3_64, "crc32": _Crc32}


def running(name: str):
    """A running checksum with update(bytes) and intdigest()."""
    return CHECKSUMS[name]()


def digest(name: str, data) -> int:
    h = running(name)
    h.update(data)
    return h.intdigest()
