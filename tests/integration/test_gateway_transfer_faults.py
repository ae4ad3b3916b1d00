"""A transfer rejected on arrival fails the prefill, and the gateway prefills the request again:
the client gets exactly the tokens of an undamaged run, and the decode worker never ran anything
from the rejected pages. Damage of every kind is caught: checksums that do not match, frames
dropped, truncated, corrupted, reordered or repeated, a stream without its end, a receiver that
stalls past the sender's deadline (its late writes land nowhere); delayed frames still land.
Afterwards every block is free and both pools pass check_integrity."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import msgpack
import pytest

from services.kvtransfer import TransferConfig, frames, grpc_sender
from services.kvtransfer.inbox import PageInbox
from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from tests.helpers.gateway_cluster import gateway_cluster

pytestmark = pytest.mark.timeout(120)


async def _tokens(address: str, text: str) -> list[int]:
    async with grpc.aio.insecure_channel(address) as ch:
        out = []
        async for msg in gen_grpc.GenerationStub(ch).Generate(gen.GenerateRequest(
                text=text, sampling=gen.SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True))):
            out += msg.token_ids
        return out


async def test_a_corrupted_transfer_is_prefilled_again_and_the_tokens_are_right(monkeypatch):
    text = "the same prompt, twice " * 3
    async with gateway_cluster("disaggregated", kv_transport="grpc") as c:
        encode_end, damaged = frames.encode_end, []

        def damage_first(page_checksums, total_bytes):
            if not damaged:                     # the first transfer's checksums are wrong
                damaged.append(True)
                page_checksums = [s ^ 1 for s in page_checksums]
            return encode_end(page_checksums, total_bytes)
        monkeypatch.setattr(frames, "encode_end", damage_first)
        got = await _tokens(c.gateway.grpc_address, text)
        monkeypatch.setattr(frames, "encode_end", encode_end)
        assert damaged
        assert got == await _tokens(c.gateway.grpc_address, text) and len(got) == 6
        retries = c.gateway.metrics.registry.get_sample_value(
            "tandem_request_retries_total", {"stage": "before_first_token"})
        assert retries == 1
        decode = c.decode[0].worker
        assert decode.prompt_counter.prompt_tokens == 0       # nothing recomputed from bad pages
        assert await c.blocks_all_free(), c.free_blocks()


# --- frames damaged on the wire: dropped, truncated, corrupted, reordered, repeated, delayed ------


SMALL_CHUNKS = TransferConfig(chunk_bytes=64 * 2**10, streams=1)   # 4 pages a data frame


def _frame(wire: bytes) -> bytes:
    return bytes(frames.kvchunk_frame(wire))


def _wire(frame: bytes) -> bytes:
    return frames._as_kvchunk([frame], len(frame))


def _cut_payload(frame: bytes, keep_map: bool) -> bytes:
    """A data frame with its last 100 bytes gone; keep_map: the map still announces them."""
    msg = frames.decode_frame(memoryview(frame))
    data = bytes(msg["data"])[:-100]
    if keep_map:
        return frame[:-100]
    return msgpack.packb({"kind": "data", "offset": msg["offset"], "nbytes": len(data)}) + data


def _flip(frame: bytes) -> bytes:
    out = bytearray(frame)
    out[-7] ^= 0x40
    return bytes(out)


# Each fault turns the first transfer's frames [header, data..., end] into what the receiver gets.
FAULTS = {
    "dropped data frame": lambda f: f[:2] + f[3:],
    "truncated payload": lambda f: f[:2] + [_cut_payload(f[2], keep_map=True)] + f[3:],
    "truncated, consistent map": lambda f: f[:2] + [_cut_payload(f[2], keep_map=False)] + f[3:],
    "corrupted payload byte": lambda f: f[:2] + [_flip(f[2])] + f[3:],
    "corrupted map": lambda f: f[:1] + [b"\xc1" + f[1][1:]] + f[2:],
    "data before header": lambda f: [f[1], f[0]] + f[2:],
    "end before the last data": lambda f: f[:-2] + [f[-1], f[-2]],
    "data frame repeated": lambda f: f[:2] + [f[1]] + f[2:],
    "no end frame": lambda f: f[:-1],
    "empty stream": lambda f: [],
}


def _damage_first_transfer(monkeypatch, fault) -> list[bool]:
    original, damaged = grpc_sender._StripeEncoder.__iter__, []

    def damaged_iter(self):
        wires = list(original(self))
        if damaged:
            yield from wires
            return
        damaged.append(True)
        assert len(wires) >= 4, "the transfer needs several data frames"
        yield from (_wire(f) for f in fault([_frame(w) for w in wires]))
    monkeypatch.setattr(grpc_sender._StripeEncoder, "__iter__", damaged_iter)
    return damaged


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_a_damaged_page_stream_is_refused_and_the_request_prefilled_again(monkeypatch, fault):
    text = "pages that arrive damaged must never be decoded " * 6      # ~300 tokens, 5 data frames
    async with gateway_cluster("disaggregated", kv_transport="grpc", transfer=SMALL_CHUNKS) as c:
        reference = await _tokens(c.gateway.grpc_address, text)
        damaged = _damage_first_transfer(monkeypatch, FAULTS[fault])
        got = await _tokens(c.gateway.grpc_address, text + " ")
        assert damaged
        monkeypatch.undo()
        assert got == await _tokens(c.gateway.grpc_address, text + " ") and reference
        retries = c.gateway.metrics.registry.get_sample_value(
            "tandem_request_retries_total", {"stage": "before_first_token"})
        assert retries == 1, fault
        assert c.decode[0].worker.prompt_counter.prompt_tokens == 0    # nothing decoded from bad pages
        assert await c.blocks_all_free(), c.free_blocks()


async def test_delayed_frames_still_land_and_nothing_is_retried(monkeypatch):
    text = "slow but sound pages " * 12
    async with gateway_cluster("disaggregated", kv_transport="grpc", transfer=SMALL_CHUNKS) as c:
        reference = await _tokens(c.gateway.grpc_address, text)
        original = grpc_sender._StripeEncoder.__iter__

        def slow_iter(self):
            for wire in original(self):
                time.sleep(0.05)
                yield wire
        monkeypatch.setattr(grpc_sender._StripeEncoder, "__iter__", slow_iter)
        got = await _tokens(c.gateway.grpc_address, text)
        assert got == reference
        assert c.gateway.metrics.registry.get_sample_value(
            "tandem_request_retries_total", {"stage": "before_first_token"}) in (None, 0.0)
        assert await c.blocks_all_free(), c.free_blocks()


async def test_a_stalling_receiver_times_the_transfer_out_and_its_late_writes_land_nowhere(monkeypatch):
    """The decode side stops reading mid-transfer for longer than the sender waits: the transfer
    fails on the sender's deadline, the request is prefilled again (into the same blocks, as they
    were freed), and the stalled receiver's late writes go nowhere (its inbox was closed)."""
    text = "a receiver that stalls must not hang the request " * 6
    async with gateway_cluster("disaggregated", kv_transport="grpc",
                               transfer=TransferConfig(chunk_bytes=64 * 2**10, streams=1, timeout_s=1.0)) as c:
        reference = await _tokens(c.gateway.grpc_address, text)
        write, stalled, late = PageInbox.write, threading.Event(), []

        def stall_once(self, page_index, offset, data):
            if not stalled.is_set():
                stalled.set()
                time.sleep(2.5)             # beyond the sender's 1 s
                try:
                    return write(self, page_index, offset, data)
                except Exception as exc:    # noqa: BLE001 - what a late write gets
                    late.append(exc)
                    raise
            return write(self, page_index, offset, data)
        monkeypatch.setattr(PageInbox, "write", stall_once)
        got = await _tokens(c.gateway.grpc_address, text + " ")
        await asyncio.sleep(3.0)            # the stalled write has woken and been refused
        monkeypatch.undo()
        assert stalled.is_set()
        assert got == await _tokens(c.gateway.grpc_address, text + " ") and reference
        assert late, "the late write was not refused"
        assert await c.blocks_all_free(), c.free_blocks()
