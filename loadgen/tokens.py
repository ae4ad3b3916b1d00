"""Counting tokens on the client. Exact when the server's tokenizer is at hand (`--tokenizer`:
a Tandem preset or checkpoint dir through services.engine, or any tokenizer.json); otherwise an
approximation that every report names as such, next to the server's own counts."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Protocol, Sequence

from loadgen.errors import BenchConfigError

_WORDISH = re.compile(r"\w+|[^\w\s]")


class TokenCounter(Protocol):
    method: str          # how counts are made, printed in every report
    exact: bool

    def count(self, text: str) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class ApproximateCounter:
    """One token per word or punctuation mark: right for the common English words the random
    dataset uses (each is one token in the usual BPE vocabularies), rough for other text."""

    method: str = "approximate (1 token per word or punctuation mark; no --tokenizer)"
    exact: bool = False

    def count(self, text: str) -> int:
        return len(_WORDISH.findall(text))

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError("an approximate counter has no token ids")

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError("an approximate counter has no token ids")


class ExactCounter:
    """Wraps any tokenizer with encode(text, add_special_tokens) / decode(ids): Tandem's
    services.engine.tokenizer.Tokenizer, or a `tokenizers.Tokenizer` through _HFTokenizersAdapter."""

    exact = True

    def __init__(self, tokenizer, source: str) -> None:
        self._tokenizer = tokenizer
        self.method = f"exact ({source})"

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=True)


class _HFTokenizersAdapter:
    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer
        self._tok = Tokenizer.from_file(path)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def load_token_counter(name: str | None) -> TokenCounter:
    """None -> approximate. A tokenizer.json file or a directory holding one -> that tokenizer.
    Anything else is handed to Tandem's loader (presets such as tiny-random, checkpoint dirs)."""
    if not name:
        return ApproximateCounter()
    candidate = os.path.join(name, "tokenizer.json") if os.path.isdir(name) else name
    if candidate.endswith(".json") and os.path.isfile(candidate):
        try:
            return ExactCounter(_HFTokenizersAdapter(candidate), candidate)
        except Exception as exc:   # the tokenizers library raises bare Exceptions on bad files
            raise BenchConfigError("--tokenizer", f"cannot load {candidate}: {exc}") from None
    return ExactCounter(_load_engine_tokenizer(name), f"Tandem tokenizer of {name}")


def _load_engine_tokenizer(name: str):
    """Tandem's own tokenizer for a preset or checkpoint dir, without loading any weights."""
    from services.engine.errors import TandemError
    try:
        from services.engine.loader import load_tokenizer
        return load_tokenizer(name).tokenizer
    except ImportError as exc:
        raise BenchConfigError("--tokenizer", f"Tandem's engine is not available to load {name!r}: {exc}") from None
    except TandemError as exc:
        raise BenchConfigError("--tokenizer", f"cannot load {name!r}: {exc}") from None
