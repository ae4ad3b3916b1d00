"""Console tables: one block per run (vLLM's layout, plus what it leaves out) and one line per
sweep point."""

from __future__ import annotations

from loadgen.stats import percentile_label

WIDTH = 62


def _num(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _line(label: str, value) -> str:
    return f"{label:<44}{_num(value):>18}"


def format_run(label: str, s: dict, percentiles: tuple[float, ...], token_count_method: str,
               interrupted: bool = False) -> str:
    out = [f" Serving Benchmark Result: {label}{' (interrupted)' if interrupted else ''} ".center(WIDTH, "=")]
    out.append(_line("Successful requests:", s["completed"]))
    out.append(_line("Failed requests:", s["failed"]))
    if s["errors_by_code"]:
        out.append("  errors: " + ", ".join(f"{code} x{n}" for code, n in s["errors_by_code"].items()))
    if s["interrupted_requests"]:
        out.append(_line("Interrupted requests:", s["interrupted_requests"]))
    out.append(_line("Max concurrency observed:", s["max_concurrency_observed"]))
    out.append(_line("Benchmark duration (s):", s["duration"]))
    out.append(_line("Total input tokens:", s["total_input_tokens"]))
    out.append(_line("Total generated tokens:", s["total_output_tokens"]))
    out.append(_line("Request throughput (req/s):", s["request_throughput"]))
    out.append(_line("Output token throughput (tok/s):", s["output_throughput"]))
    out.append(_line("Total token throughput (tok/s):", s["total_token_throughput"]))
    if s["request_goodput"] is not None:
        out.append(_line("Request goodput (req/s):", s["request_goodput"]))
        out.append(_line("Goodput fraction (failures count):", s["goodput_fraction"]))
    out.append(" Token counts: server vs client ".center(WIDTH, "-"))
    out.append(f"  client counting: {token_count_method}")
    out.append(_line("Input tokens, server / client:", f"{_num(s['server_input_tokens'])} / {s['total_input_tokens']:,}"))
    out.append(_line("Output tokens, server / client:",
                     f"{_num(s['total_output_tokens'] if s['requests_with_server_usage'] else None)} / "
                     f"{s['client_output_tokens']:,}"))
    out.append(_line("Requests with prompt / output mismatch:",
                     f"{s['prompt_token_mismatches']} / {s['output_token_mismatches']}"))
    if s["prompt_token_mismatches"] or s["output_token_mismatches"]:
        out.append(_line("Mean server - client, prompt / output:",
                         f"{_num(s['prompt_tokens_server_minus_client'])} / "
                         f"{_num(s['output_tokens_server_minus_client'])}"))
    for name, title in (("ttft", "Time to First Token"), ("ttst", "Time to Second Token"),
                        ("tpot", "Time per Output Token (excl. 1st token)"), ("itl", "Inter-token Latency"),
                        ("e2el", "End-to-end Latency"), ("queue", "Time Queued in Client")):
        out.append(f" {title} ".center(WIDTH, "-"))
        upper = name.upper()
        out.append(_line(f"Mean {upper} (ms):", s[f"mean_{name}_ms"]))
        out.append(_line(f"Median {upper} (ms):", s[f"median_{name}_ms"]))
        out.append(_line(f"Std {upper} (ms):", s[f"std_{name}_ms"]))
        for p in percentiles:
            out.append(_line(f"{percentile_label(p).upper()} {upper} (ms):", s[f"{percentile_label(p)}_{name}_ms"]))
    out.append("=" * WIDTH)
    return "\n".join(out)


def format_sweep(rows: list[tuple[str, dict]], percentiles: tuple[float, ...]) -> str:
    """One line per point: the median and the highest chosen percentile of each latency."""
    hi = percentile_label(max(percentiles)) if percentiles else "median"
    columns = [("point", 22), ("ok", 6), ("fail", 5), ("req/s", 8), ("out tok/s", 10),
               (f"TTFT p50/{hi}", 17), (f"TPOT p50/{hi}", 15), (f"ITL p50/{hi}", 15),
               ("E2E p50", 9), (f"queue {hi}", 10), ("goodput", 9)]
    lines = ["".join(f"{name:>{w}}" for name, w in columns)]
    for label, s in rows:
        def pair(m: str) -> str:
            return f"{_num(s[f'median_{m}_ms'], 1)}/{_num(s.get(f'{hi}_{m}_ms'), 1)}"
        cells = [label, s["completed"], s["failed"], _num(s["request_throughput"]), _num(s["output_throughput"], 0),
                 pair("ttft"), pair("tpot"), pair("itl"), _num(s["median_e2el_ms"], 0),
                 _num(s.get(f"{hi}_queue_ms"), 1), _num(s["goodput_fraction"])]
        lines.append("".join(f"{str(c):>{w}}" for c, (_, w) in zip(cells, columns)))
    return "\n".join(lines)
