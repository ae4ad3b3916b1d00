"""OpenAI request parsing: accepted spellings, and errors naming the field."""

import pytest

from services.engine.errors import InvalidRequestError
from services import wire
from services.gateway.openai_protocol import parse_request


def field_of(body, chat=False) -> str:
    with pytest.raises(InvalidRequestError) as info:
        parse_request(body, chat)
    return info.value.field


def test_completion_defaults_and_values():
    oa = parse_request({"model": "m", "prompt": "hi", "max_tokens": 5, "temperature": 0, "top_p": 0.5,
                        "top_k": 3, "seed": 7, "stop": "\n", "ignore_eos": True, "logprobs": 2,
                        "stream": True, "stream_options": {"include_usage": True}}, chat=False)
    params = oa.params(default_max_tokens=16)
    assert (oa.prompt_text, oa.stream, oa.include_usage) == ("hi", True, True)
    assert (params.max_tokens, params.temperature, params.top_p, params.top_k, params.seed, params.stop,
            params.ignore_eos, params.logprobs) == (5, 0.0, 0.5, 3, 7, ("\n",), True, 2)
    assert parse_request({"prompt": "x"}, False).params(16).max_tokens == 16


def test_prompt_spellings():
    assert parse_request({"prompt": [1, 2, 3]}, False).prompt_token_ids == (1, 2, 3)
    assert parse_request({"prompt": ["abc"]}, False).prompt_text == "abc"
    assert parse_request({"prompt": [[4, 5]]}, False).prompt_token_ids == (4, 5)


def test_chat_messages_and_logprobs():
    oa = parse_request({"messages": [{"role": "system", "content": "be brief"},
                                     {"role": "user", "content": [{"type": "text", "text": "a"},
                                                                  {"type": "text", "text": "b"}]}],
                        "max_completion_tokens": 9, "max_tokens": 3, "logprobs": True, "top_logprobs": 2},
                       chat=True)
    assert oa.messages[1] == {"role": "user", "content": "ab"}
    assert oa.max_tokens == 9 and oa.logprobs == 2
    assert parse_request({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, True).logprobs == 0


@pytest.mark.parametrize("body,chat,field", [
    ([1, 2], False, "body"),
    ({"prompt": ""}, False, "prompt"),
    ({"prompt": []}, False, "prompt"),
    ({"prompt": ["a", "b"]}, False, "prompt"),
    ({"prompt": 3}, False, "prompt"),
    ({"prompt": "x", "n": 2}, False, "n"),
    ({"prompt": "x", "max_tokens": "10"}, False, "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, False, "max_tokens"),
    ({"prompt": "x", "temperature": "hot"}, False, "temperature"),
    ({"prompt": "x", "temperature": -1}, False, "temperature"),
    ({"prompt": "x", "top_p": 0}, False, "top_p"),
    ({"prompt": "x", "max_tokens": 0}, False, "max_tokens"),
    ({"prompt": "x", "stop": [""]}, False, "stop"),
    ({"prompt": "x", "stop": 5}, False, "stop"),
    ({"prompt": "x", "stream": "yes"}, False, "stream"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, False, "stream_options"),
    ({"prompt": "x", "presence_penalty": 0.5}, False, "presence_penalty"),
    ({"prompt": "x", "echo": True}, False, "echo"),
    ({"prompt": "x", "logprobs": 99}, False, "logprobs"),
    ({"prompt": "x", "model": 5}, False, "model"),
    ({"prompt": "x", "top_k": 2**40}, False, "top_k"),
    ({"prompt": "x", "seed": 2**64}, False, "seed"),
    ({"prompt": "x", "seed": 2**63}, False, "seed"),
    ({"prompt": "x", "max_tokens": 2**33}, False, "max_tokens"),
    ({"messages": []}, True, "messages"),
    ({"messages": [{"content": "x"}]}, True, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, True, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, True, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, True, "tools"),
])
def test_bad_requests_name_the_field(body, chat, field):
    def run():
        parse_request(body, chat).params(16)
    with pytest.raises(InvalidRequestError) as info:
        run()
    assert info.value.field == field


from hypothesis import given, settings
from hypothesis import strategies as st

_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
                     | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=8)
_FIELDS = ("model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
           "top_k", "seed", "stop", "logprobs", "top_logprobs", "n", "stream", "stream_options", "ignore_eos",
           "echo", "best_of", "presence_penalty", "frequency_penalty", "user", "tools")


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.sampled_from(_FIELDS), _JSON, max_size=8) | _JSON, chat=st.booleans())
def test_any_json_body_is_accepted_or_refused_with_a_field(body, chat):
    try:
        params = parse_request(body, chat).params(16)
    except InvalidRequestError as exc:
        assert exc.field
        return
    wire.sampling_to_proto(params)      # whatever is accepted fits the wire
