"""From sampled tokens to streamed RequestOutputs: incremental detokenization, stop strings and
the per-request text that is safe to send.

Text that could still turn out to be the start of a stop string is held back until it cannot (or
the request ends), so no client ever sees part of a stop string. A stop token's own text (EOS, a
stop_token_id) is never added; the token id itself is reported.

Without `detokenize` (a worker: the gateway detokenizes for its clients), only requests with stop
strings are detokenized, since stopping needs their text; the others stream ids alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from services.engine.outputs import RequestOutput, RequestTimings, TokenLogprob
from services.engine.request import Request, RequestStatus
from services.engine.tokenizer import IncrementalDetokenizer, Tokenizer


class _TextStream:
    def __init__(self, tokenizer: Tokenizer, request: Request) -> None:
        self.detokenizer = IncrementalDetokenizer(tokenizer, request.all_token_ids)
        self.text = ""          # output text so far, stop strings trimmed
        self.sent = 0           # characters of text already streamed
        self.holdback = max((len(s) for s in request.params.stop), default=1) - 1


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, eos_token_ids: Sequence[int],
                 finish: Callable[[Request, RequestStatus], None], detokenize: bool = True) -> None:
        self.tokenizer = tokenizer
        self.detokenize = detokenize
        self.eos_token_ids = frozenset(eos_token_ids)
        self.finish = finish
        self._streams: dict[str, _TextStream] = {}

    def add(self, request: Request) -> None:
        if self.detokenize or request.params.stop:
            self._streams[request.request_id] = _TextStream(self.tokenizer, request)

    def output(self, request: Request, token_id: int, logprob: TokenLogprob | None) -> RequestOutput:
        """The output of a request that got token_id this step (it may have finished)."""
        logprobs = None if logprob is None else (logprob,)
        stream = self._streams.get(request.request_id)
        if stream is None:
            return make_output(request, (token_id,), "", logprobs)
        before = len(stream.text)
        if not self._is_stop_token(request, token_id):
            stream.text += stream.detokenizer.add([token_id])
        if request.status.is_finished:
            stream.text += stream.detokenizer.flush()
        self._apply_stop_strings(request, stream, before)
        end = len(stream.text) if request.status.is_finished else len(stream.text) - stream.holdback
        delta = stream.text[stream.sent:max(end, stream.sent)]
        stream.sent += len(delta)
        if request.status.is_finished:
            del self._streams[request.request_id]
        return make_output(request, (token_id,), delta, logprobs)

    def aborted(self, request: Request) -> RequestOutput:
        self._streams.pop(request.request_id, None)
        return make_output(request, (), "", None)

    def _is_stop_token(self, request: Request, token_id: int) -> bool:
        return request.status == RequestStatus.FINISHED_STOPPED and (
            token_id in request.params.stop_token_ids
            or (token_id in self.eos_token_ids and not request.params.ignore_eos))

    def _apply_stop_strings(self, request: Request, stream: _TextStream, before: int) -> None:
        """Cut the text at the first stop string that the new text completes, and finish."""
        if not request.params.stop:
            return
        search_from = max(0, before - stream.holdback)
        found = [i for i in (stream.text.find(s, search_from) for s in request.params.stop) if i >= 0]
        if not found:
            return
        stream.text = stream.text[:min(found)]
        self.finish(request, RequestStatus.FINISHED_STOPPED)    # even if "length": the stop counts


def make_output(request: Request, new_token_ids: tuple[int, ...], text_delta: str,
                logprobs: tuple[TokenLogprob, ...] | None) -> RequestOutput:
    finished = request.status.is_finished
    return RequestOutput(
        request_id=request.request_id, new_token_ids=new_token_ids, text_delta=text_delta,
        logprobs=logprobs, finished=finished, finish_reason=request.status.finish_reason,
        num_prompt_tokens=request.num_prompt_tokens, num_cached_tokens=request.num_cached_tokens,
        timings=RequestTimings(request.arrival, request.first_scheduled, request.first_token,
                               request.finished))
