"""What one benchmark request is (BenchRequest) and what happened to it (RequestRecord).

Every time is a `time.perf_counter()` reading. On Linux that clock is CLOCK_MONOTONIC, shared by
all processes of the machine, so records taken in several worker processes merge on one axis."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One prompt to send. prompt_len is the client's count (see token_count_method of the run)."""

    prompt: str
    prompt_len: int
    output_len: int


@dataclass(slots=True)
class RequestRecord:
    """Filled while a request runs: the runner sets the times around the call, the backend the
    stream's chunk times and token counts. Kept flat and cheap: it is written on the hot path."""

    index: int
    prompt_len: int
    output_len_requested: int
    warmup: bool = False
    scheduled: float = 0.0          # when the load pattern wanted it sent
    started: float | None = None    # when the client began the call (in flight from here)
    sent: float | None = None       # when the request was on the wire (sent - scheduled = queued)
    end: float = 0.0                # arrival of the stream's last event; else when it failed / was abandoned
    chunk_times: list[float] = field(default_factory=list)   # arrival of each content-bearing chunk
    chunk_tokens: list[int] = field(default_factory=list)    # tokens in each chunk, when the protocol says
    text_parts: list[str] = field(default_factory=list)
    server_prompt_tokens: int | None = None
    server_output_tokens: int | None = None
    client_output_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None        # error code: HTTP status, gRPC status name, timeout, ...
    error_detail: str = ""
    interrupted: bool = False       # cancelled by Ctrl-C: neither completed nor failed

    @property
    def ok(self) -> bool:
        return self.error is None and not self.interrupted

    @property
    def output_tokens(self) -> int:
        """Output tokens used by the metrics: the server's count when it reports one (it used the
        right tokenizer), else the client's."""
        if self.server_output_tokens is not None:
            return self.server_output_tokens
        if self.client_output_tokens is not None:
            return self.client_output_tokens
        return sum(self.chunk_tokens) if self.chunk_tokens else len(self.chunk_times)

    def fail(self, code: str, detail: str = "") -> None:
        self.error = code
        self.error_detail = detail[:300]
