"""Prometheus metrics (metrics.py: every metric's definition, a registry per service instance),
GPU gauges through NVML (gpu.py) and a /metrics endpoint for workers (exposition.py)."""
