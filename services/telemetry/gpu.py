"""GPU gauges read through NVML (nvidia-ml-py): memory used / total, utilization and power per
device. Without a GPU or a driver, the gauges are simply absent: nothing fails."""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger(__name__)


def _nvml():
    """The initialised pynvml module, or None where there is no NVIDIA driver."""
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml
    except Exception:  # noqa: BLE001 - no library, no driver, no device: all mean "no GPU"
        return None


class GpuGauges:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._nvml = _nvml()
        self._handles = []
        if self._nvml is not None:
            try:
                count = self._nvml.nvmlDeviceGetCount()
                self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            except Exception as exc:  # noqa: BLE001
                log.warning("NVML present but unusable: %s", exc)
        self.available = bool(self._handles)
        if not self.available:
            return
        self.memory_used = Gauge("tandem_gpu_memory_used_bytes", "GPU memory in use", ["gpu"], registry=registry)
        self.memory_total = Gauge("tandem_gpu_memory_total_bytes", "GPU memory", ["gpu"], registry=registry)
        self.utilization = Gauge("tandem_gpu_utilization_ratio", "GPU busy fraction (0-1)", ["gpu"],
                                 registry=registry)
        self.power = Gauge("tandem_gpu_power_watts", "GPU power draw", ["gpu"], registry=registry)

    def update(self) -> None:
        """Reads every device now (called when /metrics is scraped)."""
        for index, handle in enumerate(self._handles):
            gpu = str(index)
            try:
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                self.memory_used.labels(gpu).set(mem.used)
                self.memory_total.labels(gpu).set(mem.total)
                self.utilization.labels(gpu).set(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)
                self.power.labels(gpu).set(self._nvml.nvmlDeviceGetPowerUsage(handle) / 1000)
            except Exception as exc:  # noqa: BLE001 - a reading that fails leaves the last value
                log.debug("NVML read failed on GPU %s: %s", gpu, exc)


def free_gpu_memory_bytes(device_index: int = 0) -> int | None:
    """Free memory on one GPU per NVML (for sizing a KV pool), or None without a GPU."""
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        return int(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(device_index)).free)
    except Exception:  # noqa: BLE001
        return None
