"""The byte-level BPE tokenizer of the `tiny-random` preset, built in memory with `tokenizers`.

Its merges are learnt by a small greedy BPE over a fixed corpus (ties broken by the pair itself),
so it is the same in every process. The corpus mixes English, accented Latin, CJK and emoji: some
merged tokens hold part of a multi-byte character, which is what incremental detokenization must
cope with."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors

BOS, EOS, END_OF_TURN = "<|bos|>", "<|eos|>", "<|end|>"
SPECIAL_TOKENS = (BOS, EOS, END_OF_TURN, "<|system|>", "<|user|>", "<|assistant|>")
NUM_MERGES = 61

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = (
    "the quick brown fox jumps over the lazy dog. the cat sat on the mat and then the cat ran. "
    "in the beginning there was the token, and the token was in the stream of the text. "
    "serving language models means batching the prefill and the decode of the requests. "
    "café naïve déjà vu über straße señor. 你好世界，你好模型，世界你好。 "
    "こんにちは世界。 🙂🙂 🚀🚀 👍"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, as the ByteLevel pre-tokenizer uses."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _learn_merges(words: list[tuple[str, ...]], num_merges: int) -> list[tuple[str, str]]:
    counts = Counter(words)
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in counts.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        counts = Counter({_merge(word, best): c for word, c in counts.items()})
    return merges


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if word[i:i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def build_byte_level_tokenizer() -> tokenizers.Tokenizer:
    table = _bytes_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    words = [tuple(table[b] for b in w.encode("utf-8")) for w in re.findall(r" ?\S+", _CORPUS)]
    merges = _learn_merges(words, NUM_MERGES)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return tok


def tokenizer_config() -> dict[str, Any]:
    """tokenizer_config.json of the preset (what a checkpoint directory would carry)."""
    return {"bos_token": BOS, "eos_token": EOS, "chat_template": CHAT_TEMPLATE,
            "tokenizer_class": "PreTrainedTokenizerFast"}
