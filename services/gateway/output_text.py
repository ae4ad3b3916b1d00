"""A request's output text as the client sees it: detokenized incrementally, with stop strings
cut out. The decode engine stops at the token that completes a stop string, but tokens carry the
string itself (and maybe text after it), so the gateway trims them; while streaming it holds back
any tail that could still become a stop string, so none is ever sent in part."""

from __future__ import annotations

from typing import Sequence

from services.engine.tokenizer import IncrementalDetokenizer, Tokenizer


class OutputText:
    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int], stop: Sequence[str]) -> None:
        self._detok = IncrementalDetokenizer(tokenizer, prompt_token_ids)
        self._stop = tuple(stop)
        self._held = ""           # decoded, not sent: may be the start of a stop string
        self.stopped = False      # a stop string was found: nothing more is sent

    def add(self, token_ids: Sequence[int]) -> str:
        """Text to send for these tokens; sets `stopped` when a stop string appeared."""
        if self.stopped:
            return ""
        return self._release(self._held + self._detok.add(token_ids), final=False)

    def finish(self) -> str:
        """The held-back tail, once the request is over."""
        if self.stopped:
            return ""
        return self._release(self._held + self._detok.flush(), final=True)

    def _release(self, text: str, final: bool) -> str:
        cut = min((i for i in (text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        hold = 0 if final else _longest_stop_prefix_suffix(text, self._stop)
        self._held = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold]


def _longest_stop_prefix_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of text that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:k]):
                best = k
                break
    return best
