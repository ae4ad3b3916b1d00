"""Counts the prompt tokens an engine actually runs through the model (prefill chunks, including
recomputation after a preemption). A decode worker fed only by pages keeps this at 0: that is how
tests and load reports show the prompt's prefill really ran elsewhere.

It wraps the engine's ModelRunner (same `launch(batch, previous)`, the call of every engine
step), so the engine needs no change to be observed; prompt tokens served from the prefix cache
are never scheduled, so never counted, and neither are warm-up's synthetic batches (they go
through `run`, which is the runner's own)."""

from __future__ import annotations

from typing import Any


class PromptTokenCounter:
    def __init__(self, runner: Any) -> None:
        self._runner = runner
        self.prompt_tokens = 0

    @classmethod
    def install(cls, engine: Any) -> "PromptTokenCounter":
        counter = cls(engine.runner)
        engine.runner = counter
        return counter

    def launch(self, batch: Any, previous: Any) -> Any:
        for chunk in batch.chunks:
            prompt_end = min(chunk.start + chunk.num_tokens, chunk.request.num_prompt_tokens)
            self.prompt_tokens += max(0, prompt_end - chunk.start)
        return self._runner.launch(batch, previous)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)
