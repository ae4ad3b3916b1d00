"""Text <-> token ids (HF `tokenizers`), chat templates, and incremental detokenization.

Chat templates are the jinja2 templates shipped in tokenizer_config.json (or chat_template.jinja),
rendered in a sandbox: a template is data from the checkpoint, not code we trust."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

from services.engine.errors import InvalidRequestError, ModelNotFoundError

REPLACEMENT_CHAR = "\ufffd"


class Tokenizer:
    def __init__(self, backend: tokenizers.Tokenizer, chat_template: str | None = None,
                 bos_token: str | None = None, eos_token: str | None = None,
                 eos_token_ids: Sequence[int] = ()) -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_token_id = backend.token_to_id(bos_token) if bos_token else None
        eos = list(eos_token_ids)
        if not eos and eos_token and backend.token_to_id(eos_token) is not None:
            eos.append(backend.token_to_id(eos_token))
        self.eos_token_ids: tuple[int, ...] = tuple(eos)
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)
        self._template = _compile(chat_template) if chat_template else None

    @classmethod
    def from_dir(cls, path: str | Path, eos_token_ids: Sequence[int] = ()) -> "Tokenizer":
        """tokenizer.json, with chat template and special tokens from tokenizer_config.json."""
        path = Path(path)
        if not (path / "tokenizer.json").is_file():
            raise ModelNotFoundError(f"{path}: tokenizer.json not found")
        backend = tokenizers.Tokenizer.from_file(str(path / "tokenizer.json"))
        config = _read_json(path / "tokenizer_config.json")
        template = config.get("chat_template")
        if isinstance(template, list):   # named templates: [{"name": ..., "template": ...}]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text(encoding="utf-8")
        return cls(backend, template, _token_text(config.get("bos_token")),
                   _token_text(config.get("eos_token")), eos_token_ids)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        if self._template is None:
            raise InvalidRequestError("messages", "this model has no chat template")
        try:
            return self._template.render(messages=messages,
                                         add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token or "",
                                         eos_token=self.eos_token or "")
        except jinja2.TemplateError as e:
            raise InvalidRequestError("messages", f"chat template: {e}") from e


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False,
                                                                   indent=indent)
    return env.from_string(source)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _token_text(token: Any) -> str | None:
    """Special tokens are strings, or AddedToken dicts ({"content": ...}) in older configs."""
    if isinstance(token, dict):
        return token.get("content")
    return token


class IncrementalDetokenizer:
    """Streams a request's text piece by piece. Only text that later tokens cannot change is
    emitted: a trailing replacement character may be the first bytes of a multi-byte character
    split across tokens, so it waits for the next token (or `flush`). Decoding restarts from a
    short window that starts at a point where all text was complete, so each step costs a few
    tokens; the window keeps one token of context because some decoders (sentencepiece's
    leading-space strip) treat the first token specially."""

    _PROMPT_CONTEXT = 5

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int] = ()) -> None:
        self._tokenizer = tokenizer
        self._ids = list(prompt_token_ids)
        self._window_start = max(len(self._ids) - self._PROMPT_CONTEXT, 0)
        self._complete_at = len(self._ids)    # ids up to here decoded to complete text
        self._emitted = len(self._decode_window().rstrip(REPLACEMENT_CHAR))

    def add(self, new_token_ids: Sequence[int]) -> str:
        """The text delta of the new tokens; "" while a character is still incomplete."""
        self._ids.extend(new_token_ids)
        text = self._decode_window()
        stable = text.rstrip(REPLACEMENT_CHAR)
        delta = stable[self._emitted:]
        self._emitted = max(self._emitted, len(stable))
        if len(stable) == len(text) and len(self._ids) > self._complete_at:
            self._window_start, self._complete_at = self._complete_at, len(self._ids)
            self._emitted = len(self._decode_window())
        return delta

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        text = self._decode_window()
        delta = text[self._emitted:]
        self._emitted = len(text)
        return delta

    def _decode_window(self) -> str:
        return self._tokenizer.decode(self._ids[self._window_start:])
