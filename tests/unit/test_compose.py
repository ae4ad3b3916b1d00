"""compose.yaml cannot be run here (no Docker engine), so check what can go wrong without one, for
the CPU default and the GPU profile alike: every service's command parses with the real entry
point's parser into a valid config, the gateway names the workers by service name and port, the
decode worker advertises a name the prefill container can reach, every service has a health
check that runs a real entry point, and the GPU workers reserve a card each and run on it."""

from __future__ import annotations

import asyncio
import pathlib

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.gateway.__main__ import build_parser as gateway_parser
from services.gateway.__main__ import config_from_args as gateway_config
from services.worker.cli import build_parser as worker_parser
from services.worker.cli import worker_config_from_args
from services.worker.probe import main as probe_main

PROFILES = {"cpu": ("decode", "prefill", "gateway"), "gpu": ("decode-gpu", "prefill-gpu", "gateway-gpu")}

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


def _args(service: dict) -> tuple[str, list[str]]:
    command = service["command"]
    assert command[:2] == ["python", "-m"]
    return command[2], command[3:]


@pytest.mark.parametrize("profile", PROFILES)
def test_each_worker_command_builds_a_valid_config(services, profile) -> None:
    decode, prefill, _ = PROFILES[profile]
    for name, role in ((decode, "decode"), (prefill, "prefill")):
        module, argv = _args(services[name])
        assert module == f"services.{role}"
        args = worker_parser(module).parse_args(argv)
        config = worker_config_from_args(args)             # validates
        assert args.host == "0.0.0.0" and args.advertise_host == name and args.port > 0
        assert config.engine.device == ("cuda:0" if profile == "gpu" else None)


@pytest.mark.parametrize("profile", PROFILES)
def test_the_gateway_reaches_the_workers_by_service_name_and_port(services, profile) -> None:
    decode, prefill, gateway = PROFILES[profile]
    module, argv = _args(services[gateway])
    assert module == "services.gateway"
    config = gateway_config(gateway_parser().parse_args(argv))
    ports = {name: worker_parser(f"services.{role}").parse_args(_args(services[name])[1]).port
             for name, role in ((decode, "decode"), (prefill, "prefill"))}
    assert config.decode_workers == (f"{decode}:{ports[decode]}",)
    assert config.prefill_workers == (f"{prefill}:{ports[prefill]}",)
    assert config.mode == "disaggregated" and config.host == "0.0.0.0"
    published = {p.split(":")[0] for p in services[gateway]["ports"]}
    assert published == {str(config.grpc_port), str(config.http_port)}
    # The gateway starts once both workers are healthy (warmed up).
    assert services[gateway]["depends_on"] == {decode: {"condition": "service_healthy"},
                                               prefill: {"condition": "service_healthy"}}


def test_the_cpu_services_are_the_default_and_the_gpu_ones_a_profile(services) -> None:
    for name in PROFILES["cpu"]:
        assert "profiles" not in services[name] and "deploy" not in services[name]
        assert services[name]["image"] == "tandem-serve:latest"
    for name in PROFILES["gpu"]:
        assert services[name]["profiles"] == ["gpu"] and services[name]["image"] == "tandem-serve:gpu"
        assert services[name]["build"]["args"]["TORCH_INDEX_URL"].startswith("https://download.pytorch.org/whl/cu")


def test_each_gpu_worker_reserves_its_own_card(services) -> None:
    cards = []
    for name in PROFILES["gpu"][:2]:
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        cards += device["device_ids"]
    assert sorted(cards) == ["0", "1"]       # the one visible card is cuda:0 in each container


def test_every_service_has_a_health_check_on_its_own_port(services) -> None:
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[:2] == ["CMD", "python"], name
        if name.startswith("gateway"):
            port = gateway_config(gateway_parser().parse_args(_args(service)[1])).http_port
            assert f"127.0.0.1:{port}/health" in test[-1]
        else:
            assert test[2:4] == ["-m", "services.worker.probe"], name
            port = worker_parser(_args(service)[0]).parse_args(_args(service)[1]).port
            assert test[4:] == [f"127.0.0.1:{port}"], name


async def test_the_worker_probe_reads_the_standard_health_service() -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        address = f"127.0.0.1:{port}"
        await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert await asyncio.to_thread(probe_main, [address]) == 1
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await asyncio.to_thread(probe_main, [address]) == 0
    finally:
        await server.stop(0)
    assert await asyncio.to_thread(probe_main, [address]) == 1     # nothing listens any more


def test_the_image_pins_cpu_torch_by_default() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_VERSION=2.13.0" in dockerfile
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    assert "torch==${TORCH_VERSION} --index-url ${TORCH_INDEX_URL}" in dockerfile
