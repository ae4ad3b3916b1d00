"""Stop strings through incremental detokenization, on a byte-level tokenizer whose tokens can
hold part of a character (as real checkpoints' do; the presets' tokens are whole characters)."""

import pytest

from services.engine.presets import byte_level_tokenizer
from services.gateway.output_text import OutputText


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level_tokenizer()


def stream(tokenizer, text, stop, step=1):
    ids = tokenizer.encode(text, add_special_tokens=False)
    out = OutputText(tokenizer, [], stop)
    pieces = []
    for i in range(0, len(ids), step):
        pieces.append(out.add(ids[i:i + step]))
        if out.stopped:
            break
    pieces.append(out.finish())
    return "".join(pieces), out.stopped, pieces


def test_no_stop_strings_is_plain_detokenization(tokenizer):
    text = "the cat sat. café 你好 🙂"
    assert stream(tokenizer, text, ())[0] == text


def test_stop_string_is_cut_with_what_follows(tokenizer):
    text, stopped, _ = stream(tokenizer, "the cat sat on the mat", ("on t",))
    assert (text, stopped) == ("the cat sat ", True)


def test_partial_stop_string_is_held_back_then_released(tokenizer):
    text, stopped, pieces = stream(tokenizer, "the cat, the ca", ("cat!",))
    assert (text, stopped) == ("the cat, the ca", False)
    # While "ca"/"cat" might still become "cat!", it was not sent early.
    assert not any(p.endswith("ca") for p in pieces[:-1] if p)


def test_earliest_of_several_stop_strings(tokenizer):
    assert stream(tokenizer, "abc def ghi", ("ghi", "def"), step=3)[0] == "abc "


def test_multibyte_characters_survive_holding_back(tokenizer):
    text, stopped, _ = stream(tokenizer, "你好世界 stop here", ("stop",))
    assert (text, stopped) == ("你好世界 ", True)
