"""The byte-level BPE tokenizer of the `tiny-random` preset, built in memory with `tokenizers`.

Its merges are learnt by a small greedy BPE over a fixed corpus (ties broken by the pair itself),
so it is the same in every process. The corpus mixes English, accented Latin, CJK and emoji: some
merged tokens hold part of a multi-byte character, which is what incremental detokenization must
cope with."""

from __future__ import annotations

import itertools
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


# --- Full-vocabulary tokenizers of the presets ----------------------------------------------
#
# A preset's model can emit any id of its vocabulary (random weights emit them all), so every id
# must decode on its own to text that encodes back to that id, and any sequence of ids must
# decode to text that encodes back to the same sequence: then a client that counts tokens by
# re-encoding the streamed text counts what the server generated. Raw bytes cannot do that (a
# lone continuation byte is not text), so the vocabulary is made of whole characters and of
# generated pieces, and its decoding is a prefix code:
#   - base characters: every ASCII character, Latin-1, and for larger vocabularies more scripts,
#     one id each;
#   - pieces: PIECE_MARK followed by exactly PIECE_LETTERS ASCII letters. The mark is never a base
#     character, so in decoded text each mark starts exactly one piece of known length;
#   - the chat tokens, UNK (a character outside the base set) and the end tokens, as added tokens
#     that are not "special": they decode to their own text, so a client's count includes them.
# The pre-tokenizer splits text into pieces and single characters with one regex, and a
# WordLevel model maps each to its id. Built in well under a second, the same in every process.

PIECE_MARK = "\u2581"                      # LOWER ONE EIGHTH BLOCK, sentencepiece's word mark
PIECE_LETTERS = 3
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
UNK = "<|unk|>"
PRESET_ADDED_TOKENS = (*SPECIAL_TOKENS, UNK)

LATIN = ((0x00, 0x7F), (0xA0, 0xFF))
# For vocabularies of real size: Latin Extended, Greek, Cyrillic, general punctuation, CJK
# punctuation, kana, CJK unified ideographs, fullwidth forms, emoji.
WIDE = LATIN + ((0x100, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x2000, 0x206F), (0x3000, 0x30FF),
                (0x4E00, 0x9FFF), (0xFF00, 0xFFEF), (0x1F300, 0x1F6FF))


def _base_characters(ranges: tuple[tuple[int, int], ...]) -> list[str]:
    return [chr(c) for lo, hi in ranges for c in range(lo, hi + 1) if chr(c) != PIECE_MARK]


def _pieces(count: int) -> list[str]:
    if count > len(_LETTERS) ** PIECE_LETTERS:
        raise ValueError(f"{count} pieces do not fit in {len(_LETTERS)}^{PIECE_LETTERS}")
    return [PIECE_MARK + "".join(p) for p in itertools.islice(itertools.product(_LETTERS, repeat=PIECE_LETTERS), count)]


def build_full_vocab_tokenizer(vocab_size: int, ranges: tuple[tuple[int, int], ...] = LATIN) -> tokenizers.Tokenizer:
    """A tokenizer of exactly vocab_size ids (added tokens included), each decoding to text that
    encodes back to it; `ranges` are the code points of the base characters."""
    base = _base_characters(ranges)
    num_pieces = vocab_size - len(base) - len(PRESET_ADDED_TOKENS)
    if num_pieces < 0:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the {len(base)} base characters "
                         f"and {len(PRESET_ADDED_TOKENS)} added tokens")
    vocab = {text: i for i, text in enumerate(base + _pieces(num_pieces))}
    vocab[UNK] = len(vocab)
    tok = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    piece = re.escape(PIECE_MARK) + "[A-Za-z]{%d}" % PIECE_LETTERS
    tok.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(f"{piece}|[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in PRESET_ADDED_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    assert tok.get_vocab_size(with_added_tokens=True) == vocab_size
    return tok
