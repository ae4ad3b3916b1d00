"""The autoscaler's reading of a gateway: decode KV use counts a reservation once (a decode
worker takes reserved blocks out of its free count), and SLO attainment is over the window."""

from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from orchestration.scaling_signals import GatewaySignals
from services.gateway.workers import WorkerHandle
from services.rpc.tandem.v1 import worker_pb2
from services.telemetry.metrics import GatewayMetrics


def _decode_worker(free: int, reserved: int, running: int) -> WorkerHandle:
    report = worker_pb2.LoadReport(num_blocks=100, free_blocks=free, reserved_blocks=reserved,
                                   running_requests=running, block_size=16)
    return WorkerHandle("127.0.0.1:1", "decode", None, None, report=report, healthy=True)


def _gateway(*decode: WorkerHandle) -> SimpleNamespace:
    admission = SimpleNamespace(queued=0, prefill_wait_s=lambda tokens: 0.0)
    pool = SimpleNamespace(prefill=[], decode=list(decode))
    return SimpleNamespace(pool=pool, admission=admission,
                           metrics=GatewayMetrics(CollectorRegistry()))


def test_reserved_blocks_count_once_in_decode_kv_use():
    # 100 blocks: 30 free, so 70 taken, of which 20 reserved for requests still prefilling.
    gateway = _gateway(_decode_worker(free=30, reserved=20, running=4))
    s = GatewaySignals(gateway, max_num_seqs=8, ttft_slo_s=1.0, tpot_slo_s=0.05,
                       window_s=10.0).read(now=0.0)
    assert s.kv_utilization == 0.7
    assert s.running_fraction == 0.5 and s.decode_workers == 1


def test_slo_attainment_covers_only_the_window():
    gateway = _gateway(_decode_worker(free=100, reserved=0, running=0))
    signals = GatewaySignals(gateway, max_num_seqs=8, ttft_slo_s=1.0, tpot_slo_s=0.05,
                             window_s=10.0)
    assert signals.read(now=0.0).ttft_attainment is None          # nothing observed yet
    for seconds in (0.1, 0.2, 5.0, 6.0):                           # two within 1 s, two not
        gateway.metrics.ttft.observe(seconds)
    assert signals.read(now=1.0).ttft_attainment == 0.5
    gateway.metrics.ttft.observe(0.1)
    assert signals.read(now=20.0).ttft_attainment == 1.0           # the first four left it
