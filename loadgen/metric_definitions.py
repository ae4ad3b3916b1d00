"""Every metric the load generator reports, defined once. The JSON result carries this table,
the HTML report prints it, and docs/metrics.md explains the same names at length (a unit test
checks that every name here is defined there)."""

from __future__ import annotations

# Distributions: reported as mean_<name>_ms, median_<name>_ms, std_<name>_ms and p<P>_<name>_ms
# over the successful measured requests (warm-up excluded).
DISTRIBUTIONS = {
    "ttft": "Time to first token: from the moment the request was actually sent to the arrival of "
            "the first chunk that carries output.",
    "ttst": "Time to second token: from the send to the arrival of the chunk that carries the "
            "second output token. ttst - ttft is the first decode step after prefill (the "
            "prefill->decode hand-off in disaggregated serving).",
    "tpot": "Time per output token after the first, per request: (e2el - ttft) / (output_tokens - 1); "
            "requests with one output token have none.",
    "itl": "Inter-token latency: every gap between two consecutive output chunks of a request, "
           "pooled over all requests (a chunk may carry several tokens).",
    "e2el": "End-to-end latency: from the send to the end of the stream.",
    "queue": "Time queued in the client: from the time the load pattern scheduled the request to its "
             "actual send. Waiting for a --max-concurrency slot in an open loop, or a late client, "
             "shows here and is never folded into ttft or e2el.",
}

SCALARS = {
    "completed": "Measured requests that ended normally (stream finished, no error).",
    "failed": "Measured requests that ended in an error: error status, timeout, stream closed early, "
              "connection failure. Counted by code in `errors_by_code`.",
    "interrupted_requests": "Requests cancelled by Ctrl-C; neither completed nor failed.",
    "errors_by_code": "Failed requests by code: the HTTP status, the gRPC status name, or timeout, "
              "stream_closed, stream_error, connection_error, bad_event, client_error.",
    "duration": "Seconds from the first measured request's scheduled time to the end of the last one.",
    "request_throughput": "completed / duration, requests per second.",
    "output_throughput": "Output tokens of completed requests / duration, tokens per second.",
    "total_token_throughput": "(input + output tokens of completed requests) / duration, tokens per second.",
    "request_goodput": "Completed requests meeting every --goodput limit / duration, requests per second.",
    "goodput_fraction": "Requests meeting every --goodput limit / (completed + failed): failures count "
                        "against it.",
    "total_input_tokens": "Prompt tokens of completed requests, as counted by the client "
                          "(see token_count_method).",
    "total_output_tokens": "Output tokens of completed requests: the server's count when it reports one "
                           "(usage), else the client's.",
    "server_input_tokens": "Prompt tokens of completed requests as the server reported them (usage).",
    "client_output_tokens": "Output tokens of completed requests as the client counted them "
                            "(see token_count_method).",
    "prompt_token_mismatches": "Completed requests whose server-reported prompt tokens differ from the "
                               "client's count.",
    "output_token_mismatches": "Completed requests whose server-reported output tokens differ from the "
                               "client's count.",
    "output_token_mismatch_cause": "Why output counts differ, in words, from the mismatched requests' "
                                   "text (none when every count agreed).",
    "prompt_tokens_server_minus_client": "Mean over requests of (server-reported - client-counted) prompt "
                                         "tokens: +1 is typically a BOS token, more a chat template.",
    "output_tokens_server_minus_client": "Mean over requests of (server-reported - client-counted) output "
                                         "tokens.",
    "requests_with_server_usage": "Completed requests for which the server reported token usage.",
    "client_warnings": "The client's check on itself: fewer requests in flight than asked for, or "
                       "requests held in the client past their send time when nothing should hold them.",
    "max_concurrency_observed": "The most requests in flight at once on the client (warm-up included), "
                                "from the records' start and end times; equals --max-concurrency when "
                                "the client never caps it.",
}


def definitions() -> dict[str, str]:
    return {**{f"{name}_ms": text for name, text in DISTRIBUTIONS.items()}, **SCALARS}
