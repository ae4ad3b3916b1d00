"""Token count mismatches are reported with their cause in words, from the streamed text; with a
preset's full-vocabulary tokenizer a client re-encoding random ids' text agrees with the server."""

import random

from loadgen.metrics import summarize_run
from loadgen.records import RequestRecord
from loadgen.token_mismatch import output_mismatch_cause
from loadgen.tokens import ExactCounter
from services.engine.presets import byte_level_tokenizer, tiny_random_tokenizer


def record(i: int, server: int, client: int, text: str) -> RequestRecord:
    return RequestRecord(index=i, prompt_len=4, output_len_requested=server, sent=0.0, end=1.0,
                         chunk_times=[0.5], text_parts=[text], server_output_tokens=server,
                         client_output_tokens=client)


def test_no_mismatch_no_cause():
    assert output_mismatch_cause([]) is None
    s = summarize_run([record(0, 3, 3, "abc")], (50.0,))
    assert s["output_token_mismatches"] == 0 and s["output_token_mismatch_cause"] is None


def test_each_cause_in_words():
    cause = output_mismatch_cause([record(0, 4, 9, "a\ufffdb"), record(1, 5, 3, "ab"), record(2, 2, 4, "abcd")])
    assert "1 requests streamed U+FFFD" in cause and "lone bytes" in cause
    assert "1 requests re-encoded to fewer" in cause and "1 requests re-encoded to more" in cause


def streamed_counts(tokenizer, seed: int) -> tuple[int, int, str]:
    """(server's count, client's count, text) for 32 random ids streamed as text."""
    rng = random.Random(seed)
    ids = [rng.randrange(tokenizer.vocab_size) for _ in range(32)]
    text = tokenizer.decode(ids)
    return len(ids), ExactCounter(tokenizer, "preset").count(text), text


def test_random_ids_of_the_preset_count_the_same_and_byte_level_ones_do_not():
    preset = tiny_random_tokenizer()
    assert all(s == c for s, c, _ in (streamed_counts(preset, seed) for seed in range(24)))
    byte_level = byte_level_tokenizer()
    records = [record(i, s, c, t) for i, (s, c, t) in enumerate(streamed_counts(byte_level, i) for i in range(24))]
    summary = summarize_run(records, (50.0,))
    assert summary["output_token_mismatches"] > 0 and "U+FFFD" in summary["output_token_mismatch_cause"]
