"""Text of an exact token length. With the server's tokenizer the length is exact (cut at a token
boundary, decoded, re-encoded and adjusted); without it, one common English word per token."""

from __future__ import annotations

import numpy as np

from loadgen.tokens import TokenCounter

# Short common words: each is a single token (with its leading space) in the BPE vocabularies of
# the Llama, Mistral, Qwen and GPT families, which keeps the approximate count close.
WORDS = tuple("""
the of and to in is you that it he was for on are as with his they at be this have from or one
had by word but not what all were we when your can said there use an each which she do how their
if will up other about out many then them these so some her would make like him into time has
look two more write go see number no way could people my than first water been call who oil its
now find long down day did get come made may part over new sound take only little work know place
year live me back give most very after thing our just name good sentence man think say great where
help through much before line right too mean old any same tell boy follow came want show also
around form three small set put end does another well large must big even such because turn here
why ask went men read need land different home us move try kind hand picture again change off
play spell air away animal house point page letter mother answer found study still learn should
""".split())


def word_text(num_words: int, rng: np.random.Generator) -> str:
    """num_words random words, each preceded by a space."""
    picks = rng.integers(0, len(WORDS), size=num_words)
    return "".join(" " + WORDS[i] for i in picks)


def text_of_length(num_tokens: int, counter: TokenCounter, rng: np.random.Generator) -> str:
    """A text that `counter` counts as num_tokens tokens (exactly, barring a tokenizer whose every
    cut point merges differently on re-encoding, when it is the closest found)."""
    if num_tokens <= 0:
        return ""
    if not counter.exact:
        return word_text(num_tokens, rng)
    ids = counter.encode(word_text(num_tokens + 16, rng))
    while len(ids) < num_tokens + 4:       # byte-level vocabularies make no word shorter than 1 token
        ids += counter.encode(word_text(num_tokens, rng))
    cut, best, best_error = num_tokens, "", None
    for _ in range(6):
        text = counter.decode(ids[:cut])
        error = counter.count(text) - num_tokens
        if best_error is None or abs(error) < abs(best_error):
            best, best_error = text, error
        if error == 0:
            break
        cut = max(1, cut - error)
    return best
