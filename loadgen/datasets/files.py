"""Datasets read from files: ShareGPT JSON (the `conversations` format) and JSONL of prompts
(`{"prompt": ..., "output_len": optional int}` per line, vLLM's `custom` dataset)."""

from __future__ import annotations

import json

from loadgen.errors import DatasetError
from loadgen.records import BenchRequest
from loadgen.tokens import TokenCounter

# vLLM's ShareGPT filter, kept so results compare: drop tiny turns and over-long pairs.
SHAREGPT_MIN_TOKENS = 4
SHAREGPT_MAX_PROMPT_TOKENS = 1024
SHAREGPT_MAX_TOTAL_TOKENS = 2048


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"--dataset-path: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def sharegpt_requests(path: str, counter: TokenCounter, fixed_output_len: int | None) -> list[BenchRequest]:
    try:
        entries = json.loads(_read_text(path))
    except ValueError as exc:
        raise DatasetError(f"--dataset-path: {path} is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise DatasetError(f"--dataset-path: {path} must hold a JSON list of {{'conversations': [...]}} entries")
    requests = []
    for entry in entries:
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        try:
            prompt, completion = str(turns[0]["value"]), str(turns[1]["value"])
        except (KeyError, TypeError):
            continue
        prompt_len = counter.count(prompt)
        output_len = fixed_output_len or counter.count(completion)
        if fixed_output_len is None and (prompt_len < SHAREGPT_MIN_TOKENS or output_len < SHAREGPT_MIN_TOKENS):
            continue
        if prompt_len > SHAREGPT_MAX_PROMPT_TOKENS or prompt_len + output_len > SHAREGPT_MAX_TOTAL_TOKENS:
            continue
        requests.append(BenchRequest(prompt, prompt_len, output_len))
    if not requests:
        raise DatasetError(f"--dataset-path: {path} holds no usable conversation (need >= 2 turns, "
                           f"prompt <= {SHAREGPT_MAX_PROMPT_TOKENS} tokens)")
    return requests


def jsonl_requests(path: str, counter: TokenCounter, default_output_len: int) -> list[BenchRequest]:
    requests = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt = row["prompt"]
            output_len = int(row.get("output_len", default_output_len))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DatasetError(f"--dataset-path: {path} line {number}: expected "
                               f'{{"prompt": "...", "output_len": optional int}}') from None
        if not isinstance(prompt, str) or not prompt or output_len < 1:
            raise DatasetError(f"--dataset-path: {path} line {number}: prompt must be a non-empty string "
                               f"and output_len >= 1")
        requests.append(BenchRequest(prompt, counter.count(prompt), output_len))
    if not requests:
        raise DatasetError(f"--dataset-path: {path} holds no prompt")
    return requests
