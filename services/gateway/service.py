"""The routing core both APIs share: authenticate, validate and tokenize a request, admit it, run
it on the workers, and stream deltas of tokens and text with the final usage. The gRPC and HTTP
front ends only translate their wire formats to and from these calls."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import uuid
from typing import AsyncIterator, Sequence

from services.engine.errors import InvalidRequestError, ModelNotFoundError
from services.engine.sampling_params import SamplingParams
from services.engine.tokenizer import Tokenizer
from services.gateway.admission import AdmissionController
from services.gateway.errors import GatewayWarmingUpError, RequestTimeoutError, UnauthenticatedError
from services.gateway.output_text import OutputText
from services.gateway.request import GenerationDelta, PreparedRequest, Usage
from services.gateway.session import WorkerSession
from services.telemetry.metrics import GatewayMetrics

MAX_REQUEST_ID_LEN = 128


class GenerationService:
    def __init__(self, *, model_id: str, max_model_len: int, tokenizer: Tokenizer,
                 api_keys: Sequence[str], request_timeout_s: float, admission: AdmissionController,
                 session: WorkerSession, metrics: GatewayMetrics) -> None:
        self.model_id = model_id
        self._max_model_len = max_model_len
        self.tokenizer = tokenizer
        self._api_keys = frozenset(api_keys)
        self._request_timeout_s = request_timeout_s
        self._admission = admission
        self._session = session
        self._metrics = metrics
        # False while the gateway warms up (warm_path.py): requests are refused, UNAVAILABLE.
        self.ready = True

    @property
    def max_model_len(self) -> int:
        """The longest request the workers take (their load reports), within the configured cap."""
        reported = self._admission.reported_max_model_len
        return min(self._max_model_len, reported) if reported else self._max_model_len

    # --- before admission: microseconds, no I/O ----------------------------------------------------
    def authenticate(self, api_key: str | None) -> str:
        """The tenant of a request (its API key); "" when the gateway has no keys configured."""
        if not self._api_keys:
            return api_key or ""
        if not api_key:
            raise UnauthenticatedError("missing API key (Authorization: Bearer <key>)")
        # Compared in constant time: response timing must not reveal how much of a key matched.
        if not any(hmac.compare_digest(api_key.encode(), k.encode()) for k in self._api_keys):
            raise UnauthenticatedError("invalid API key")
        return api_key

    def check_model(self, model: str | None) -> None:
        if model and model != self.model_id:
            raise ModelNotFoundError(f"model {model!r} is not served here; available: {self.model_id!r}")

    def encode_text(self, text: str, field: str = "prompt") -> list[int]:
        if not isinstance(text, str) or not text:
            raise InvalidRequestError(field, "must be a non-empty string")
        return self.tokenizer.encode(text)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        # The template already placed BOS and the special markers.
        return self.tokenizer.encode(rendered, add_special_tokens=False)

    def default_max_tokens(self, num_prompt_tokens: int) -> int:
        """When a client sets no limit (chat): the rest of the context, as far as a decode worker's
        KV pool can hold it (never below 1, so a too-long prompt is refused for its length)."""
        room = min(self.max_model_len, self._admission.largest_request_tokens or self.max_model_len)
        return max(1, room - num_prompt_tokens)

    def prepare(self, prompt_token_ids: Sequence[int], params: SamplingParams, tenant: str,
                request_id: str = "", prompt_field: str = "prompt",
                pinned_to: frozenset[str] = frozenset()) -> PreparedRequest:
        ids = tuple(prompt_token_ids)
        if not ids:
            raise InvalidRequestError(prompt_field, "must not be empty")
        vocab = self.tokenizer.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(prompt_field, f"token id {bad} is outside the vocabulary [0, {vocab})")
        limit = self.max_model_len
        if len(ids) >= limit:
            raise InvalidRequestError(prompt_field, f"{len(ids)} tokens; the model takes at most "
                                      f"{limit - 1} prompt tokens (max_model_len={limit})")
        if len(ids) + params.max_tokens > limit:
            raise InvalidRequestError("max_tokens", f"prompt ({len(ids)} tokens) + max_tokens "
                                      f"({params.max_tokens}) exceeds max_model_len ({limit})")
        if len(request_id) > MAX_REQUEST_ID_LEN:
            raise InvalidRequestError("request_id", f"at most {MAX_REQUEST_ID_LEN} characters")
        # The client's id is for its logs; workers key on one the gateway knows is unique.
        rid = f"{request_id}-{uuid.uuid4().hex[:12]}" if request_id else uuid.uuid4().hex
        now = time.monotonic()
        return PreparedRequest(rid, ids, params, tenant, now, now + self._request_timeout_s, pinned_to)

    # --- the request's life ------------------------------------------------------------------------
    async def generate(self, req: PreparedRequest, api: str) -> AsyncIterator[GenerationDelta]:
        """Deltas of tokens and text; the last carries finish_reason and usage. Raises the typed
        errors of admission and workers; closing the iterator early cancels the request."""
        if not self.ready:
            raise GatewayWarmingUpError("the gateway is warming up; it serves once /health says ok")
        ticket = await self._admission.admit(req.request_id, req.tenant, len(req.prompt_token_ids),
                                             req.num_tokens, req.deadline, req.pinned_to)
        text = OutputText(self.tokenizer, req.prompt_token_ids, req.params.stop)
        completion = cached = 0
        first_at = last_at = None
        outcome = "error"
        try:
            chunks = self._session.run(req, ticket)
            async with contextlib.aclosing(chunks):
                async for fields in chunks:
                    if time.monotonic() > req.deadline:
                        raise RequestTimeoutError(f"request exceeded {self._request_timeout_s:g}s")
                    completion += len(fields.token_ids)
                    cached = max(cached, fields.cached_prompt_tokens)
                    delta_text = text.add(fields.token_ids)
                    reason = "stop" if text.stopped else fields.finish_reason
                    if reason is not None:
                        delta_text += text.finish()
                    now = time.monotonic()
                    if first_at is None:
                        first_at = now
                        self._metrics.ttft.observe(now - req.arrival)
                    else:
                        self._metrics.itl.observe(now - last_at)
                    last_at = now
                    usage = Usage(len(req.prompt_token_ids), completion, cached) if reason else None
                    yield GenerationDelta(fields.token_ids, delta_text, fields.logprobs, reason, usage)
                    if reason is not None:
                        outcome = reason
                        break
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "cancelled"
            raise
        except Exception as exc:
            self._metrics.failures.labels(type(exc).__name__).inc()
            raise
        finally:
            self._admission.release(ticket)
            self._record(api, outcome, req, completion, first_at, last_at)

    def _record(self, api: str, outcome: str, req: PreparedRequest, completion: int,
                first_at: float | None, last_at: float | None) -> None:
        self._metrics.requests.labels(api, outcome).inc()
        self._metrics.generation_tokens.inc(completion)
        if last_at is not None:
            self._metrics.e2e.observe(last_at - req.arrival)
            if completion > 1 and first_at is not None:
                self._metrics.tpot.observe((last_at - first_at) / (completion - 1))
