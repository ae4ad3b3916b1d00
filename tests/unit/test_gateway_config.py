"""GatewayConfig and AdmissionConfig refuse inconsistent values, naming them."""

import pytest

from services.engine.errors import ConfigError
from services.gateway.config import AdmissionConfig, GatewayConfig

D, P = ("127.0.0.1:1",), ("127.0.0.1:2",)


@pytest.mark.parametrize("fields,needle", [
    (dict(decode_workers=()), "decode_workers"),
    (dict(decode_workers=D), "prefill_workers"),                     # disaggregated needs prefill
    (dict(mode="colocated", decode_workers=D, prefill_workers=P), "colocated"),
    (dict(mode="both", decode_workers=D, prefill_workers=P), "mode"),
    (dict(decode_workers=D, prefill_workers=P, grpc_port=70000), "grpc_port"),
    (dict(decode_workers=D, prefill_workers=P, kv_transport="rdma"), "kv_transport"),
    (dict(decode_workers=D, prefill_workers=P, request_timeout_s=0), "request_timeout_s"),
    (dict(decode_workers=D, prefill_workers=P, api_keys=("",)), "api_keys"),
    (dict(decode_workers=D, prefill_workers=P, max_model_len=1), "max_model_len"),
])
def test_gateway_config_rejects(fields, needle):
    with pytest.raises(ConfigError, match=needle):
        GatewayConfig(**fields)


@pytest.mark.parametrize("fields,needle", [
    (dict(max_queued_requests=-1), "max_queued_requests"),
    (dict(queue_timeout_s=0), "queue_timeout_s"),
    (dict(max_running_requests=0), "max_running_requests"),
    (dict(tenant_tokens_per_s=-1), "tenant_tokens_per_s"),
    (dict(retry_after_s=0), "retry_after_s"),
])
def test_admission_config_rejects(fields, needle):
    with pytest.raises(ConfigError, match=needle):
        AdmissionConfig(**fields)


def test_defaults_and_model_id():
    config = GatewayConfig(decode_workers=list(D), prefill_workers=list(P))
    assert config.decode_workers == D and config.model_id == "tiny-random"
    assert GatewayConfig(mode="colocated", decode_workers=D, served_model_name="m").model_id == "m"
