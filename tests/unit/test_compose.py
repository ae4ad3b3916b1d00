"""compose.yaml cannot be run here (no Docker engine), so check what can go wrong without one:
every service's command parses with the real entry point's parser into a valid config, the
gateway names the workers by service name and port, and the decode worker advertises a name the
prefill container can reach."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from services.gateway.__main__ import build_parser as gateway_parser
from services.gateway.__main__ import config_from_args as gateway_config
from services.worker.cli import build_parser as worker_parser
from services.worker.cli import worker_config_from_args

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


def _args(service: dict) -> tuple[str, list[str]]:
    command = service["command"]
    assert command[:2] == ["python", "-m"]
    return command[2], command[3:]


def test_each_worker_command_builds_a_valid_config(services) -> None:
    for name in ("decode", "prefill"):
        module, argv = _args(services[name])
        assert module == f"services.{name}"
        args = worker_parser(module).parse_args(argv)
        worker_config_from_args(args)             # validates
        assert args.host == "0.0.0.0" and args.advertise_host == name and args.port > 0


def test_the_gateway_reaches_the_workers_by_service_name_and_port(services) -> None:
    module, argv = _args(services["gateway"])
    assert module == "services.gateway"
    config = gateway_config(gateway_parser().parse_args(argv))
    ports = {name: worker_parser(name).parse_args(_args(services[name])[1]).port
             for name in ("decode", "prefill")}
    assert config.decode_workers == (f"decode:{ports['decode']}",)
    assert config.prefill_workers == (f"prefill:{ports['prefill']}",)
    assert config.mode == "disaggregated" and config.host == "0.0.0.0"
    published = {p.split(":")[0] for p in services["gateway"]["ports"]}
    assert published == {str(config.grpc_port), str(config.http_port)}
    assert set(services["gateway"]["depends_on"]) == {"decode", "prefill"}


def test_the_image_pins_cpu_torch() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile and "whl/cpu" in dockerfile
