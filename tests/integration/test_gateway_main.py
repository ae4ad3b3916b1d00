"""`python -m services.gateway` in its own process, as a container runs it, in front of
in-process workers: it reports its bound ports, serves, and exits cleanly on SIGTERM."""

import asyncio
import re
import signal
import sys

import grpc
import pytest

from services.rpc.tandem.v1 import generation_pb2 as gen
from services.rpc.tandem.v1 import generation_pb2_grpc as gen_grpc
from tests.helpers.gateway_cluster import gateway_cluster

pytestmark = pytest.mark.timeout(120)


async def test_module_entry_point_serves_and_stops():
    async with gateway_cluster("disaggregated") as c:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.gateway", "--grpc-port", "0", "--http-port", "0",
            "--decode", c.decode[0].address, "--prefill", c.prefill[0].address, "--log-level", "WARNING",
            stdout=asyncio.subprocess.PIPE)
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            match = re.match(r"gateway: gRPC (\S+)\s+HTTP (\S+)", line)
            assert match, line
            async with grpc.aio.insecure_channel(match.group(1)) as ch:
                msgs = [m async for m in gen_grpc.GenerationStub(ch).Generate(gen.GenerateRequest(
                    text="from a container", sampling=gen.SamplingParams(max_tokens=3)))]
            assert msgs[-1].usage.completion_tokens == 3
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert await c.blocks_all_free(), c.free_blocks()


async def test_bad_arguments_exit_with_a_message():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.gateway", "--decode", "127.0.0.1:1", "--mode", "colocated",
        "--prefill", "127.0.0.1:2", stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and b"prefill_workers must be empty in colocated mode" in err
