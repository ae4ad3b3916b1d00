"""LLMEngine: the step loop shared by colocated workers, prefill workers and decode workers.

    batch = scheduler.schedule()         # who runs this step, and how many tokens each
    step = runner.launch(batch, ...)     # one forward pass and sampling, queued on the device
    scheduler.advance(batch)             # count its tokens, hold a placeholder for each new one
    ...                                  # (the next batch is scheduled and queued here)
    scheduler.commit(batch, ..., step.result().token_ids)   # stop, free; stream the outputs

One batch stays in flight: each `step()` queues the next batch before it waits for the current
one, so scheduling, input preparation and output processing run while the device computes.
A step's outputs are those of the batch it waited for; a request added between two steps joins
the batch after the one already queued.

Disaggregation hooks: a prefill_only request stops after its first token with finish_reason
"prefilled" and keeps its blocks (`held_pages`, then `release`); on the decode side `reserve`
takes blocks for the incoming pages and `add_prefilled_request` joins the running batch with its
K/V already in them."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from services.engine.config import EngineConfig
from services.engine.errors import CapacityError, ConfigError, InvalidRequestError
from services.engine.kv_cache import KVCacheManager
from services.engine.loader import LoadedModel, load_model
from services.engine.memory_profile import activation_reserve
from services.engine.output_processor import OutputProcessor
from services.engine.outputs import RequestOutput
from services.engine.request import Request, RequestStatus
from services.engine.runner import InFlightStep, ModelRunner
from services.engine.sampler import Sampler
from services.engine.sampling_params import SamplingParams
from services.engine.scheduler import SampleSlot, Scheduler
from services.engine.warmup import WarmupReport, warm_up


class LLMEngine:
    def __init__(self, config: EngineConfig, loaded: LoadedModel | None = None) -> None:
        if loaded is None:
            device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            loaded = load_model(config.model, config.dtype, device)
        weight = next(loaded.model.parameters())
        self.device = weight.device
        self.tokenizer = loaded.tokenizer
        self.model_config = loaded.config
        scheduler = config.scheduler.for_device(self.device.type)
        # Sized after the weights are in place, so a GPU budget counts only what is left, and
        # after the steps' own allocations are measured, so that they fit beside it.
        reserve = 0
        if config.cache.num_blocks is None:
            reserve = activation_reserve(
                loaded.model, loaded.config, scheduler, self._wanted_model_len(config),
                config.cache.block_size, self.device, graphs=not config.enforce_eager)
        self.kv = KVCacheManager(config.cache, loaded.config, self.device, weight.dtype, reserve)
        self.max_model_len = self._max_model_len(config)
        self.scheduler = Scheduler(scheduler, self.kv, self.max_model_len, loaded.eos_token_ids)
        self.runner = ModelRunner(loaded.model, self.kv, Sampler(config.seed, self.device), self.device)
        self.outputs = OutputProcessor(self.tokenizer, loaded.eos_token_ids, self.scheduler.finish,
                                       config.detokenize)
        self._requests: dict[str, Request] = {}    # unfinished, and prefilled ones holding blocks
        self._reserved: set[str] = set()
        self._pending: list[RequestOutput] = []    # outputs of aborts, sent with the next step
        self._enforce_eager = config.enforce_eager
        self._in_flight: tuple[InFlightStep, list[SampleSlot]] | None = None

    def warm_up(self) -> WarmupReport:
        """Compile every kernel for the shapes it will meet and capture the CUDA graphs
        (unless eager is enforced), before the first request: see warmup.py."""
        return warm_up(self, capture_graphs=not self._enforce_eager)

    def _wanted_model_len(self, config: EngineConfig) -> int:
        model_limit = self.model_config.max_position_embeddings
        wanted = config.scheduler.max_model_len or model_limit
        if wanted > model_limit:
            raise ConfigError(f"max_model_len ({wanted}) exceeds the model's "
                              f"max_position_embeddings ({model_limit})")
        return wanted

    def _max_model_len(self, config: EngineConfig) -> int:
        # A request must fit in the pool on its own, or preemption could never make room for it.
        return min(self._wanted_model_len(config), self.kv.num_blocks * self.kv.block_size)

    # --- the step loop ---

    def step(self) -> list[RequestOutput]:
        outputs, self._pending = self._pending, []
        if self._in_flight is None:
            self._in_flight = self._launch()
            if self._in_flight is None:
                return outputs
        ahead = self._launch()          # queued behind the batch in flight
        outputs += self._commit(*self._in_flight)
        self._in_flight = ahead
        return outputs

    def _launch(self) -> tuple[InFlightStep, list[SampleSlot]] | None:
        batch = self.scheduler.schedule()
        if not batch.chunks:
            return None
        previous = self._in_flight[0] if self._in_flight is not None else None
        step = self.runner.launch(batch, previous)
        return step, self.scheduler.advance(batch)

    def _commit(self, step: InFlightStep, slots: list[SampleSlot]) -> list[RequestOutput]:
        result = step.result()          # the step's one wait
        outputs = []
        for j in self.scheduler.commit(step.batch, slots, result.token_ids):
            request = slots[j].request
            outputs.append(self.outputs.output(request, result.token_ids[j], result.logprobs[j]))
            if request.status.is_finished and request.status != RequestStatus.FINISHED_PREFILLED:
                del self._requests[request.request_id]
        return outputs

    def has_unfinished_requests(self) -> bool:
        return self._in_flight is not None or self.scheduler.has_unfinished()

    def add_request(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams,
                    *, prefill_only: bool = False, generated_token_ids: Sequence[int] = (),
                    room_tokens: int = 0) -> None:
        """A new request; with `generated_token_ids` (tokens another worker already streamed),
        one that resumes: the prompt and those tokens are computed again, as after a preemption,
        and sampling continues at output index len(generated_token_ids). With `room_tokens`, it
        joins only if the pool's free blocks hold that many tokens now (CapacityError otherwise,
        nothing held): the check a reservation makes, without holding the blocks."""
        self._check_new_id(request_id)
        prompt = self._validated_prompt(prompt_token_ids, params)
        generated = self._validated_generated(generated_token_ids, params, prefill_only)
        if not 0 <= room_tokens <= self.max_model_len:
            raise InvalidRequestError("room_tokens", f"must be in [0, max_model_len={self.max_model_len}], "
                                                     f"got {room_tokens}")
        if room_tokens and not self.kv.can_allocate(request_id, room_tokens):
            raise CapacityError(f"{self.kv.blocks_for(room_tokens)} blocks needed, "
                                f"{self.kv.num_free_blocks} free")
        request = Request(request_id, prompt, params, time.time(), prefill_only=prefill_only,
                          output_token_ids=generated)
        self._requests[request_id] = request
        self.outputs.add(request)
        self.scheduler.add(request)

    def abort(self, request_id: str) -> bool:
        """Free everything the request holds. A running or waiting request streams a last output
        with finish_reason "abort" on the next step."""
        if request_id in self._reserved:
            self.cancel_reservation(request_id)
            return True
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        if request.status == RequestStatus.FINISHED_PREFILLED:
            self.scheduler.release(request_id)
            return True
        self.scheduler.finish(request, RequestStatus.FINISHED_ABORTED)
        self._pending.append(self.outputs.aborted(request))
        return True

    # --- disaggregation hooks ---

    def held_pages(self, request_id: str) -> tuple[list[int], int]:
        """(block ids in order, number of tokens with K/V) of a "prefilled" request."""
        request = self.scheduler.held.get(request_id)
        if request is None:
            raise InvalidRequestError("request_id", f"{request_id!r} is not a prefilled request holding pages")
        num_tokens = request.num_computed_tokens
        return list(self.kv.block_ids(request_id)[:self.kv.blocks_for(num_tokens)]), num_tokens

    def release(self, request_id: str) -> None:
        """Free a prefilled request's blocks once its pages are copied out (idempotent)."""
        if self.scheduler.release(request_id):
            del self._requests[request_id]

    def reserve(self, request_id: str, num_tokens: int) -> list[int] | None:
        """Decode side: take blocks for num_tokens now; None if they do not fit."""
        self._check_new_id(request_id)
        if not 0 < num_tokens <= self.max_model_len:
            raise InvalidRequestError("num_tokens", f"must be in [1, max_model_len={self.max_model_len}], "
                                                    f"got {num_tokens}")
        if not self.kv.can_allocate(request_id, num_tokens):
            return None
        self.kv.allocate(request_id, num_tokens)
        self._reserved.add(request_id)
        return list(self.kv.block_ids(request_id))

    def cancel_reservation(self, request_id: str) -> None:
        """Give back reserved blocks that no request joined (idempotent)."""
        if request_id in self._reserved:
            self._reserved.discard(request_id)
            self.kv.free(request_id)

    def add_prefilled_request(self, request_id: str, prompt_token_ids: Sequence[int],
                              generated_token_ids: Sequence[int], params: SamplingParams) -> None:
        """Decode side: the reserved blocks hold K/V of the prompt and of every generated token
        but the last; the request continues from len(generated_token_ids) outputs."""
        if request_id not in self._reserved:
            raise InvalidRequestError("request_id", f"{request_id!r} has no reservation")
        prompt = self._validated_prompt(prompt_token_ids, params)
        if not 0 < len(generated_token_ids) < params.max_tokens:
            raise InvalidRequestError("generated_token_ids", f"must hold 1 to max_tokens - 1 "
                                      f"({params.max_tokens - 1}) tokens, got {len(generated_token_ids)}")
        request = Request(request_id, prompt, params, time.time(), output_token_ids=generated_token_ids)
        request.num_computed_tokens = request.num_tokens - 1
        reserved_tokens = len(self.kv.block_ids(request_id)) * self.kv.block_size
        if reserved_tokens < request.num_computed_tokens:
            raise InvalidRequestError("num_tokens", f"{request.num_computed_tokens} tokens of K/V "
                                      f"do not fit the {reserved_tokens} reserved")
        self._reserved.discard(request_id)
        self.kv.cache_full_blocks(request_id, request.all_token_ids, request.num_computed_tokens)
        self._requests[request_id] = request
        self.outputs.add(request)
        self.scheduler.add_resumed(request)

    # --- checks ---

    def check_integrity(self) -> None:
        """The pool's own check, plus: every table belongs to a live request or reservation."""
        self.kv.check_integrity(self.scheduler.block_owners() + sorted(self._reserved))

    def _check_new_id(self, request_id: str) -> None:
        if not request_id:
            raise InvalidRequestError("request_id", "must not be empty")
        if request_id in self._requests or request_id in self._reserved:
            raise InvalidRequestError("request_id", f"{request_id!r} is already in use")

    def _validated_generated(self, generated_token_ids: Sequence[int], params: SamplingParams,
                             prefill_only: bool) -> list[int]:
        generated = list(generated_token_ids)
        if not generated:
            return generated
        if prefill_only:
            raise InvalidRequestError("generated_token_ids", "must be empty for a prefill")
        if len(generated) >= params.max_tokens:
            raise InvalidRequestError("generated_token_ids", f"must hold fewer than max_tokens "
                                      f"({params.max_tokens}) tokens, got {len(generated)}")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in generated):
            raise InvalidRequestError("generated_token_ids", f"token ids must be in [0, {vocab})")
        return generated

    def _validated_prompt(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> list[int]:
        prompt = list(prompt_token_ids)
        if not prompt:
            raise InvalidRequestError("prompt", "must not be empty")
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise InvalidRequestError("prompt_token_ids", f"token ids must be in [0, {vocab})")
        if len(prompt) >= self.max_model_len:
            raise InvalidRequestError("prompt", f"{len(prompt)} tokens leave no room to generate "
                                      f"within max_model_len={self.max_model_len}")
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise InvalidRequestError("max_tokens", f"prompt ({len(prompt)} tokens) + max_tokens "
                                      f"({params.max_tokens}) exceeds max_model_len={self.max_model_len}")
        return prompt
