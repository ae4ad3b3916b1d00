"""OpenAI request parsing: accepted spellings, and errors naming the field."""

import pytest

from services.engine.errors import InvalidRequestError
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
