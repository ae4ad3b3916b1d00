"""The GPUs of this machine, as the placement sees them: the count CUDA reports to this process
(so the standard CUDA_VISIBLE_DEVICES still narrows it), and the smallest card's memory read
through NVML, which creates no CUDA context in the launcher."""

from __future__ import annotations

import logging

from orchestration.placement import Gpus

log = logging.getLogger(__name__)


def local_gpus() -> Gpus:
    import torch
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Gpus(count, _smallest_card_bytes() if count else None)


def _smallest_card_bytes() -> int | None:
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            totals = [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total
                      for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # noqa: BLE001 - no library or driver: memory unknown, not an error
        log.info("GPU memory unknown (NVML: %s); workers check their own budget", exc)
        return None
    return min(totals) if totals else None
