"""A gateway listening beyond loopback must check API keys, unless told --insecure: a server
open to a network by mistake should refuse to start, not serve anyone who finds it."""

from __future__ import annotations

import ipaddress

from services.engine.errors import ConfigError

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and "localhost"; a wildcard (0.0.0.0, ::) or any other name is not."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_keys: tuple[str, ...], insecure: bool) -> None:
    if not api_keys and not insecure and not is_loopback(host):
        raise ConfigError(f"--host {host} listens beyond loopback: give --api-key KEY "
                          "(or --insecure to serve without authentication)")
