"""Tokenizer wrapper, chat templates and incremental detokenization."""

from __future__ import annotations

import json
import random

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, normalizers

from services.engine.errors import InvalidRequestError, ModelNotFoundError
from services.engine.presets import byte_level_tokenizer
from services.engine.presets_tokenizer import tokenizer_config
from services.engine.tokenizer import IncrementalDetokenizer, Tokenizer

TOKENIZER = byte_level_tokenizer()
TEXTS = ["hello the world", "你好世界，你好模型", "🙂🚀👍 emoji", "café naïve straße",
         "mixed: 中文 and English 🙂 é", " leading and trailing spaces  ", "\n\ttabs\n"]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text):
    ids = TOKENIZER.encode(text, add_special_tokens=False)
    assert TOKENIZER.decode(ids) == text
    with_bos = TOKENIZER.encode(text)
    assert with_bos[0] == TOKENIZER.bos_token_id and with_bos[1:] == ids


def test_special_tokens_are_skipped_unless_asked():
    eos = TOKENIZER.eos_token_ids[0]
    ids = TOKENIZER.encode("hi", add_special_tokens=False) + [eos]
    assert TOKENIZER.decode(ids) == "hi"
    assert TOKENIZER.decode(ids, skip_special_tokens=False) == "hi<|eos|>"


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_round_trip_random_unicode(text):
    # Special-token text in the input (e.g. "<|bos|>") encodes to the special token, as in HF.
    ids = TOKENIZER.encode(text, add_special_tokens=False)
    assert TOKENIZER.decode(ids, skip_special_tokens=False) == text


def test_chat_template():
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi 🙂"}]
    prompt = TOKENIZER.apply_chat_template(messages)
    assert prompt == "<|bos|><|system|>be brief<|end|>\n<|user|>hi 🙂<|end|>\n<|assistant|>"
    assert not TOKENIZER.apply_chat_template(messages, add_generation_prompt=False).endswith(
        "<|assistant|>")
    ids = TOKENIZER.encode(prompt, add_special_tokens=False)
    assert ids[0] == TOKENIZER.bos_token_id and TOKENIZER.eos_token_ids[1] in ids


def test_chat_template_raise_exception_is_a_request_error():
    with pytest.raises(InvalidRequestError, match="unknown role: tool") as e:
        TOKENIZER.apply_chat_template([{"role": "tool", "content": "x"}])
    assert e.value.field == "messages"


def test_chat_template_runs_sandboxed():
    evil = Tokenizer(TOKENIZER.backend, "{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(InvalidRequestError):
        evil.apply_chat_template([{"role": "user", "content": "x"}])


def test_no_chat_template():
    with pytest.raises(InvalidRequestError, match="no chat template"):
        Tokenizer(TOKENIZER.backend).apply_chat_template([{"role": "user", "content": "x"}])


def write_tokenizer_dir(path, config: dict) -> None:
    TOKENIZER.backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))


def test_from_dir_reads_token_dicts_and_named_templates(tmp_path):
    write_tokenizer_dir(tmp_path, {
        "bos_token": {"content": "<|bos|>", "special": True}, "eos_token": {"content": "<|eos|>"},
        "chat_template": [{"name": "tool_use", "template": "tools"},
                          {"name": "default", "template": "{{ bos_token }}{{ eos_token }}"}]})
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.apply_chat_template([]) == "<|bos|><|eos|>"
    assert tok.eos_token_ids == (tok.backend.token_to_id("<|eos|>"),)
    assert tok.vocab_size == TOKENIZER.vocab_size


def test_chat_template_file_wins(tmp_path):
    write_tokenizer_dir(tmp_path, {"chat_template": "from config"})
    (tmp_path / "chat_template.jinja").write_text("from file {{ messages | length }}")
    assert Tokenizer.from_dir(tmp_path).apply_chat_template([{}]) == "from file 1"


def test_from_dir_without_tokenizer_json(tmp_path):
    with pytest.raises(ModelNotFoundError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def stream(tokenizer: Tokenizer, ids: list[int], prompt: list[int] = (), chunk_seed=None):
    """Feed ids (one at a time, or in random chunks); returns the deltas and the final flush."""
    detok = IncrementalDetokenizer(tokenizer, prompt)
    rng = random.Random(chunk_seed)
    deltas, i = [], 0
    while i < len(ids):
        n = 1 if chunk_seed is None else rng.randint(1, 4)
        deltas.append((i + n, detok.add(ids[i:i + n])))
        i += n
    return deltas, detok.flush()


@pytest.mark.parametrize("text", TEXTS)
def test_incremental_equals_full_decode_at_every_prefix(text):
    ids = TOKENIZER.encode(text, add_special_tokens=False)
    deltas, tail = stream(TOKENIZER, ids)
    emitted = ""
    for end, delta in deltas:
        emitted += delta
        assert "\ufffd" not in emitted
        assert emitted == TOKENIZER.decode(ids[:end]).rstrip("\ufffd")
    assert emitted + tail == text and tail == ""


def test_split_characters_wait_for_their_last_byte():
    ids = TOKENIZER.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1       # the emoji spans tokens in this vocabulary
    deltas, _ = stream(TOKENIZER, ids)
    assert [d for _, d in deltas] == [""] * (len(ids) - 1) + ["🙂"]


def test_incomplete_character_is_flushed_as_replacement():
    ids = TOKENIZER.encode("ok 🙂", add_special_tokens=False)[:-1]
    deltas, tail = stream(TOKENIZER, ids)
    assert "".join(d for _, d in deltas) == "ok " and tail == "\ufffd"


def test_incremental_continues_a_prompt():
    prompt = TOKENIZER.encode("你好世界，", add_special_tokens=True)
    out = TOKENIZER.encode("你好模型 🙂 done", add_special_tokens=False) + [TOKENIZER.eos_token_ids[0]]
    deltas, tail = stream(TOKENIZER, out, prompt)
    assert "".join(d for _, d in deltas) + tail == "你好模型 🙂 done"


@settings(max_examples=80, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
       chunk_seed=st.integers(0, 1000))
def test_incremental_property(text, chunk_seed):
    ids = TOKENIZER.encode(text, add_special_tokens=False)
    deltas, tail = stream(TOKENIZER, ids, chunk_seed=chunk_seed)
    emitted = ""
    for end, delta in deltas:
        emitted += delta
        assert TOKENIZER.decode(ids[:end]).startswith(emitted)
        if "\ufffd" not in text:
            assert emitted == TOKENIZER.decode(ids[:end]).rstrip("\ufffd")
    assert emitted + tail == TOKENIZER.decode(ids)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, TOKENIZER.vocab_size - 1), max_size=30))
def test_incremental_on_arbitrary_ids(ids):
    """What a random model generates: invalid byte sequences included."""
    deltas, tail = stream(TOKENIZER, ids)
    assert "".join(d for _, d in deltas) + tail == TOKENIZER.decode(ids)


def sentencepiece_like() -> Tokenizer:
    """A Llama-2 style tokenizer: metaspace words, byte fallback, leading-space strip."""
    words = ["▁hello", "▁world", "▁the", "▁cat", "▁", "h", "e", "l", "o", "w", "r", "d"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    vocab.update({w: len(vocab) + i for i, w in enumerate(words)})
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True,
                                              unk_token="<unk>", fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    backend.add_special_tokens(["<s>", "</s>"])
    return Tokenizer(backend, bos_token="<s>", eos_token="</s>")


def test_incremental_keeps_leading_spaces_with_a_strip_decoder():
    tok = sentencepiece_like()
    prompt = [vocab_id(tok, "<s>"), vocab_id(tok, "▁hello")]
    out = [vocab_id(tok, w) for w in ("▁world", "▁the", "▁cat")]
    out += [3 + b for b in "é🙂".encode()] + [vocab_id(tok, "</s>")]
    deltas, tail = stream(tok, out, prompt)
    text = "".join(d for _, d in deltas) + tail
    assert text == " world the caté🙂"
    assert tok.decode(prompt + out) == "hello" + text


def vocab_id(tok: Tokenizer, token: str) -> int:
    return tok.backend.token_to_id(token)


# Constructs real templates use: whitespace control, namespace, loop, trim, tojson,
# strftime_now, raise_exception, and special tokens passed in as variables.
LLAMA3_LIKE = """{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|system|>Today Date: " + date_string + "\\n\\n" + system_message + "<|end|>" }}
{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('roles must alternate user/assistant') }}
    {%- endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {{- '<|' + message['role'] + '|>' + message['content'] | trim + '<|end|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>' }}{%- endif %}
{{- {"turns": ns.turns} | tojson }}"""

CHATML = """{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""


@pytest.mark.parametrize("template", [LLAMA3_LIKE, CHATML, tokenizer_config()["chat_template"]])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_as_transformers_does(tmp_path, template, add_generation_prompt):
    transformers = pytest.importorskip("transformers")
    write_tokenizer_dir(tmp_path, {**tokenizer_config(), "chat_template": template})
    messages = [{"role": "system", "content": "  be brief "},
                {"role": "user", "content": "hi 🙂"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "你好"}]
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    expected = hf.apply_chat_template(messages, tokenize=False,
                                      add_generation_prompt=add_generation_prompt)
    assert Tokenizer.from_dir(tmp_path).apply_chat_template(messages, add_generation_prompt) \
        == expected


def test_llama3_like_template_raises_on_bad_roles():
    tok = Tokenizer(TOKENIZER.backend, LLAMA3_LIKE, "<|bos|>", "<|eos|>")
    with pytest.raises(InvalidRequestError, match="alternate"):
        tok.apply_chat_template([{"role": "assistant", "content": "x"}])


def test_prompt_ending_inside_a_character():
    ids = TOKENIZER.encode("ok 🙂!", add_special_tokens=False)
    split = next(i for i in range(1, len(ids)) if TOKENIZER.decode(ids[:i]).endswith("\ufffd"))
    deltas, tail = stream(TOKENIZER, ids[split:], prompt=ids[:split])
    assert "".join(d for _, d in deltas) + tail == "🙂!"
