"""Why the server's and the client's output token counts differ, in words, from the requests
whose counts differ: the text they streamed says which cause it is."""

from __future__ import annotations

from loadgen.records import RequestRecord

REPLACEMENT_CHAR = "\ufffd"


def output_mismatch_cause(mismatched: list[RequestRecord]) -> str | None:
    """One sentence per cause seen (None when every count agreed)."""
    if not mismatched:
        return None
    causes = []
    garbled = [r for r in mismatched if REPLACEMENT_CHAR in "".join(r.text_parts)]
    if garbled:
        causes.append(f"{len(garbled)} requests streamed U+FFFD replacement characters: the server sent ids "
                      "that are not whole characters on their own (lone bytes of a byte-level vocabulary), "
                      "and each U+FFFD re-encodes as other tokens")
    rest = [r for r in mismatched if r not in garbled]
    fewer = [r for r in rest if (r.client_output_tokens or 0) < (r.server_output_tokens or 0)]
    more = [r for r in rest if (r.client_output_tokens or 0) > (r.server_output_tokens or 0)]
    if fewer:
        causes.append(f"{len(fewer)} requests re-encoded to fewer tokens than the server generated: ids that "
                      "decode to no text (special tokens skipped) or pieces that merge when re-encoded")
    if more:
        causes.append(f"{len(more)} requests re-encoded to more tokens than the server generated: the client's "
                      "tokenizer splits the text finer than the server's ids (another tokenizer, or ids "
                      "whose text does not encode back to them)")
    return "; ".join(causes) + "."
