"""Runs the client's coroutines on uvloop when installed (the `fast` extra): its lower per-event
cost keeps the client from becoming the bottleneck it is measuring."""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")

try:
    import uvloop
except ImportError:        # optional dependency: plain asyncio gives the same results, slower
    uvloop = None


def run_async(coro: Awaitable[T]) -> T:
    if uvloop is not None:
        return uvloop.run(coro)
    return asyncio.run(coro)


def loop_name() -> str:
    return "uvloop" if uvloop is not None else "asyncio"
