"""Every preset's tokenizer covers its whole vocabulary: each id decodes on its own to non-empty
text that encodes back to that id, any sequence of ids decodes to text that encodes back to the
same sequence (so a client counting tokens by re-encoding text counts what the server made), and
the chat template and end tokens still work. CPU only, no weights loaded."""

from __future__ import annotations

import random

import pytest

from services.engine.presets import PRESET_TOKENIZERS, PRESETS, byte_level_tokenizer
from services.engine.presets_tokenizer import END_OF_TURN, EOS, PIECE_MARK


@pytest.fixture(scope="module", params=sorted(PRESET_TOKENIZERS))
def preset(request):
    return request.param, PRESET_TOKENIZERS[request.param]()


def test_every_preset_has_a_full_vocabulary_tokenizer():
    assert set(PRESET_TOKENIZERS) == set(PRESETS)


def test_every_id_decodes_to_text_that_encodes_back_to_it(preset):
    name, tok = preset
    ids = range(tok.vocab_size)
    texts = tok.backend.decode_batch([[i] for i in ids], skip_special_tokens=True)
    empty = [i for i, t in zip(ids, texts) if not t]
    assert not empty, f"{name}: {len(empty)} ids decode to empty text, e.g. {empty[:5]}"
    encoded = tok.backend.encode_batch(texts, add_special_tokens=False)
    wrong = [(i, t, e.ids) for i, t, e in zip(ids, texts, encoded) if e.ids != [i]]
    assert not wrong, f"{name}: {len(wrong)} ids do not round-trip, e.g. {wrong[:5]}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_any_sequence_of_ids_round_trips(preset, seed):
    name, tok = preset
    rng = random.Random(seed)
    ids = [rng.randrange(tok.vocab_size) for _ in range(3000)]
    assert tok.encode(tok.decode(ids), add_special_tokens=False) == ids


def test_end_tokens_and_chat_template(preset):
    name, tok = preset
    assert tok.eos_token_ids == (tok.backend.token_to_id(EOS), tok.backend.token_to_id(END_OF_TURN))
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi there"}])
    assert prompt == "<|bos|><|user|>hi there<|end|>\n<|assistant|>"
    ids = tok.encode(prompt, add_special_tokens=False)
    assert ids[0] == tok.bos_token_id and tok.eos_token_ids[1] in ids and tok.decode(ids) == prompt
    assert tok.encode("hi")[0] == tok.bos_token_id and tok.decode(tok.encode("hi")[1:]) == "hi"


def test_text_round_trips_where_the_characters_are_covered(preset):
    name, tok = preset
    texts = ["hello the world", "café naïve straße", " leading and trailing  ", "\n\ttabs\n", "a{b}[c]~"]
    if name == "llama-3.1-8b-random":
        texts += ["你好世界，你好模型", "🙂🚀👍 emoji", "Привет, κόσμε"]
    for text in texts:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    unk = tok.encode("\U000E0100", add_special_tokens=False)          # outside every base range
    assert len(unk) == 1 and tok.decode(unk) == "<|unk|>"


def test_the_build_is_deterministic(preset):
    name, tok = preset
    assert PRESET_TOKENIZERS[name]().backend.to_str() == tok.backend.to_str()


def test_pieces_are_a_prefix_code(preset):
    name, tok = preset
    pieces = [t for t in tok.backend.get_vocab() if t.startswith(PIECE_MARK)]
    assert pieces and len({len(p) for p in pieces}) == 1
    assert all(PIECE_MARK not in t for t in tok.backend.get_vocab() if not t.startswith(PIECE_MARK))


def test_a_byte_level_vocabulary_would_fail_the_check():
    # The check above is not vacuous: the byte-level BPE of real checkpoints has lone bytes.
    tok = byte_level_tokenizer()
    texts = tok.backend.decode_batch([[i] for i in range(256)])
    assert any(tok.encode(t, add_special_tokens=False) != [i] for i, t in enumerate(texts))
