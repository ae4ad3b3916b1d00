"""The client's check on itself: did the load that reached the server match the load asked for?
Its findings are printed under the run's table and saved with the run, never silently dropped."""

from __future__ import annotations

from loadgen.load_pattern import LoadSpec

# Client queueing above this, where none is expected, means the client fell behind.
LATE_QUEUE_MS = 10.0


def client_warnings(spec: LoadSpec, summary: dict) -> list[str]:
    warnings = []
    sent = summary["completed"] + summary["failed"]
    asked = spec.max_concurrency
    if asked and sent >= asked and summary["max_concurrency_observed"] < asked:
        warnings.append(f"only {summary['max_concurrency_observed']} requests were in flight at once, "
                        f"not the {asked} asked for")
    p99_queue = max((v for k, v in summary.items() if k.endswith("_queue_ms") and k.startswith("p")
                     and v is not None), default=None)
    expects_queue = spec.max_concurrency is not None and not spec.closed_loop
    if p99_queue is not None and p99_queue > LATE_QUEUE_MS and not expects_queue:
        warnings.append(f"requests waited up to {p99_queue:.1f} ms in the client before being sent: the "
                        f"client fell behind (more --num-workers, or a less loaded machine)")
    return warnings
