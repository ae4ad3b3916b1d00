"""The gRPC transport's wire format: each `KVChunk.frame` is one msgpack map, which a data frame
follows with its raw payload.

    header  {"kind": "header", "request_id", "dtype", "page_shape", "num_tokens",
             "total_pages" (of the transfer), "first_page", "num_pages" (of this stream's stripe),
             "block_ids" (the stripe's blocks on the receiving side; may be empty),
             "checksum": "xxh3_64" | "crc32"}
    data    {"kind": "data", "offset": byte offset in the stripe's pages, "nbytes": n}, then n bytes
    end     {"kind": "end", "total_bytes", "checksums": [checksum of each page]}

A transfer may be split into stripes of consecutive pages sent on parallel streams, each a
complete header / data / end sequence. Data frames are at most `chunk_bytes` and may span page
boundaries (small pages share a frame,
large ones span several). The payload stays outside the msgpack map so that neither end copies
it to (de)serialize: the receiver checksums and lands it straight from the message's buffer.
Encoding also skips protobuf's copy: a KVChunk with only field 1 set is exactly
`0x0a, varint(len), frame`, so the bytes are the message's wire form and any protobuf client or
server reads them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import msgpack

from services.engine.errors import KVTransferError
from services.kvtransfer import checksums
from services.kvtransfer.pages import PageLayout, PageRun
from services.rpc.tandem.v1 import worker_pb2

_FIELD1_LEN = b"\x0a"      # field 1, wire type 2 (length-delimited)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _as_kvchunk(frame_parts: Sequence[bytes | memoryview], frame_len: int) -> bytes:
    return b"".join([_FIELD1_LEN, _varint(frame_len), *frame_parts])


def encode_header(run: PageRun, stripe: range | None = None, checksum: str = checksums.DEFAULT) -> bytes:
    layout = run.layout
    stripe = stripe or range(len(run.block_ids))
    frame = msgpack.packb({
        "kind": "header", "request_id": run.request_id, "dtype": layout.dtype,
        "page_shape": list(layout.page_shape), "num_tokens": run.num_tokens,
        "total_pages": len(run.block_ids), "first_page": stripe.start, "num_pages": len(stripe),
        "block_ids": list(run.dst_block_ids[stripe.start:stripe.stop]), "checksum": checksum})
    return _as_kvchunk([frame], len(frame))


def encode_data(offset: int, pieces: Sequence[memoryview]) -> bytes:
    """One data frame over pieces of consecutive pages; the payload is copied once, here."""
    size = sum(len(p) for p in pieces)
    head = msgpack.packb({"kind": "data", "offset": offset, "nbytes": size})
    return _as_kvchunk([head, *pieces], len(head) + size)


def encode_end(page_checksums: Sequence[int], total_bytes: int) -> bytes:
    frame = msgpack.packb({"kind": "end", "total_bytes": total_bytes,
                           "checksums": list(page_checksums)})
    return _as_kvchunk([frame], len(frame))


def kvchunk_frame(wire: bytes) -> memoryview:
    """The frame inside a KVChunk's wire bytes (used as the server's request deserializer)."""
    view = memoryview(wire)
    if view[:1] == _FIELD1_LEN:
        length, shift, pos = 0, 0, 1
        while pos < len(view) and pos < 11:
            byte = view[pos]
            length |= (byte & 0x7F) << shift
            shift, pos = shift + 7, pos + 1
            if not byte & 0x80:
                if pos + length == len(view):
                    return view[pos:]
                break
    # Some other valid encoding (e.g. unknown fields): let protobuf parse it.
    return memoryview(worker_pb2.KVChunk.FromString(wire).frame)


_DATA_HEAD_BYTES = 64     # a data frame's map is ~40 bytes; header and end maps may be longer


def decode_frame(frame: memoryview) -> dict:
    """The frame's map; a data frame's payload is under "data", a view of the frame (no copy)."""
    try:
        unpacker = msgpack.Unpacker(raw=False)
        unpacker.feed(frame[:_DATA_HEAD_BYTES])
        try:
            msg = unpacker.unpack()
        except msgpack.OutOfData:       # a long header or end map: all of it is msgpack
            msg, end = msgpack.unpackb(frame, raw=False), len(frame)
        else:
            end = unpacker.tell()
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise KVTransferError(f"malformed frame: {exc}") from None
    if not isinstance(msg, dict) or msg.get("kind") not in ("header", "data", "end"):
        raise KVTransferError("malformed frame: not a header, data or end map")
    if msg["kind"] == "data":
        if msg.get("nbytes") != len(frame) - end:
            raise KVTransferError(f"data frame announces {msg.get('nbytes')} bytes, carries {len(frame) - end}")
        msg["data"] = frame[end:]
    elif end != len(frame):
        raise KVTransferError(f"malformed frame: {len(frame) - end} bytes after a {msg['kind']} map")
    return msg


@dataclass(frozen=True)
class StripeHeader:
    request_id: str
    layout: PageLayout
    num_tokens: int
    total_pages: int
    first_page: int
    num_pages: int
    block_ids: tuple[int, ...]
    checksum: str


def header_fields(msg: dict) -> StripeHeader:
    """A header frame's fields, type-checked."""
    try:
        if msg["checksum"] not in checksums.CHECKSUMS:
            raise KVTransferError(f"checksum {msg['checksum']!r} is not one of {sorted(checksums.CHECKSUMS)}")
        return StripeHeader(
            str(msg["request_id"]), PageLayout(str(msg["dtype"]), tuple(int(d) for d in msg["page_shape"])),
            int(msg["num_tokens"]), int(msg["total_pages"]), int(msg["first_page"]),
            int(msg["num_pages"]), tuple(int(b) for b in msg["block_ids"]), str(msg["checksum"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise KVTransferError(f"malformed header frame: {exc!r}") from None
