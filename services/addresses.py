"""host:port strings and free ports, the same way for the gateway, the workers and the launchers."""

from __future__ import annotations

import socket


def bracket_host(host: str) -> str:
    """An IPv6 literal in brackets, as host:port needs it."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on this host now (for a process started next that must know it up front)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """count distinct ports free on this host now: each stays bound until all are picked, so
    the system cannot hand out one twice (separate free_port calls can return the same)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = [socket.socket(family) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host.strip("[]"), 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
