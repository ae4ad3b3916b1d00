"""A gateway listening beyond loopback refuses to start without an API key unless told
--insecure: in its config, and from both entry points before anything starts."""

import pytest

from orchestration import cli
from services.engine.errors import ConfigError
from services.gateway import __main__ as gateway_main
from services.gateway.config import GatewayConfig
from services.security.exposure import is_loopback

D, P = ("127.0.0.1:1",), ("127.0.0.1:2",)


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.0.0.53", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.2", False), ("gateway.example", False),
])
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_beyond_loopback_needs_a_key_or_insecure():
    with pytest.raises(ConfigError, match="--host 0.0.0.0 listens beyond loopback: give --api-key"):
        GatewayConfig(decode_workers=D, prefill_workers=P, host="0.0.0.0")
    assert GatewayConfig(decode_workers=D, prefill_workers=P, host="0.0.0.0", api_keys=("k",)).api_keys == ("k",)
    assert GatewayConfig(decode_workers=D, prefill_workers=P, host="0.0.0.0", insecure=True).insecure
    assert not GatewayConfig(decode_workers=D, prefill_workers=P, host="::1").api_keys


def test_keys_are_not_in_the_config_repr():
    config = GatewayConfig(decode_workers=D, prefill_workers=P, api_keys=("sk-hidden-1234",))
    assert "sk-hidden-1234" not in repr(config)


def test_python_m_services_gateway_refuses_in_one_line(capsys):
    assert gateway_main.main(["--decode", "127.0.0.1:1", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--api-key" in err and "--insecure" in err


def test_tandem_serve_refuses_before_starting_any_worker(capsys):
    assert cli.main(["serve", "--host", "0.0.0.0", "--launcher", "inprocess"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "--api-key" in captured.err
    assert "workers up" not in captured.out
