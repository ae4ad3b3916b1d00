"""`tandem generate --target HOST:PORT` streams from a running gateway, with the same output shape
as the in-process command, and reports a server's refusal as one line with exit code 2."""

import asyncio
import json
import socket

import pytest

from orchestration.cli import main
from tests.helpers.gateway_cluster import gateway_cluster

pytestmark = pytest.mark.timeout(60)


async def test_generate_from_a_running_server(capsys):
    async with gateway_cluster("colocated") as c:
        target = c.gateway.grpc_address
        code = await asyncio.to_thread(main, ["generate", "--target", target, "--json", "--temperature", "0",
                                              "--max-tokens", "5", "hello there"])
        assert code == 0
        summary = json.loads(capsys.readouterr().out)
        assert len(summary["token_ids"]) == 5 and summary["finish_reason"] == "length"
        assert summary["timings"]["ttft_s"] >= 0
        code = await asyncio.to_thread(main, ["generate", "--target", target, "--temperature", "0",
                                              "--max-tokens", "5", "hello there"])
        assert code == 0 and capsys.readouterr().out.strip() == summary["text"].strip()
        code = await asyncio.to_thread(main, ["generate", "--target", target, "--max-tokens", "100000", "x"])
        assert code == 2 and "max_tokens" in capsys.readouterr().err


async def test_unreachable_target_is_one_line(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"
    code = await asyncio.to_thread(main, ["generate", "--target", target, "x"])
    err = capsys.readouterr().err
    assert code == 2 and target in err and len(err.strip().splitlines()) == 1
