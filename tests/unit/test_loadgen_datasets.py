"""Datasets: exact prompt lengths under the server's tokenizer, file formats, clear errors."""

import json

import numpy as np
import pytest

from loadgen.datasets import DatasetSpec, load_requests
from loadgen.datasets.random_text import text_of_length
from loadgen.errors import BenchConfigError, DatasetError
from loadgen.tokens import ApproximateCounter, load_token_counter


@pytest.fixture(scope="module")
def tandem_counter():
    return load_token_counter("tiny-random")        # Tandem's preset tokenizer, no weights loaded


@pytest.mark.parametrize("n", [1, 2, 5, 17, 128, 1000])
def test_text_of_length_is_exact_under_the_server_tokenizer(tandem_counter, n):
    rng = np.random.default_rng(n)
    assert tandem_counter.count(text_of_length(n, tandem_counter, rng)) == n


def test_random_dataset_lengths(tandem_counter):
    spec = DatasetSpec(random_input_len=64, random_output_len=20, random_range_ratio=0.25, random_prefix_len=16)
    requests = load_requests(spec, 200, tandem_counter)
    assert len(requests) == 200
    for r in requests:
        assert tandem_counter.count(r.prompt) == r.prompt_len
        assert 16 + 48 - 2 <= r.prompt_len <= 16 + 80 + 2        # joining prefix and body may merge a pair
        assert 15 <= r.output_len <= 25
    prefix = requests[0].prompt[:12]
    assert all(r.prompt.startswith(prefix) for r in requests)


def test_random_dataset_is_seeded():
    a = load_requests(DatasetSpec(random_input_len=30, seed=1), 5, ApproximateCounter())
    b = load_requests(DatasetSpec(random_input_len=30, seed=1), 5, ApproximateCounter())
    c = load_requests(DatasetSpec(random_input_len=30, seed=2), 5, ApproximateCounter())
    assert a == b and a != c
    assert all(r.prompt_len == 30 for r in a)                # one word = one approximate token


def test_prefix_repetition_groups():
    spec = DatasetSpec(name="prefix_repetition", prefix_len=40, suffix_len=10, num_prefixes=3, prefix_output_len=7)
    requests = load_requests(spec, 30, ApproximateCounter())
    heads = {" ".join(r.prompt.split()[:40]) for r in requests}
    assert len(heads) == 3 and all(r.output_len == 7 and r.prompt_len == 50 for r in requests)


def test_sharegpt(tmp_path, tandem_counter):
    conv = lambda q, a: {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
    data = [conv("what is the capital of france", "paris is the capital of france"),
            conv("hi", "a long enough answer"),                       # prompt under 4 tokens: dropped
            {"conversations": [{"from": "human", "value": "only one turn"}]},
            conv("x " * 3000, "too long")]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    requests = load_requests(DatasetSpec(name="sharegpt", path=str(path)), 5, tandem_counter)
    prompts = {r.prompt for r in requests}
    assert "what is the capital of france" in prompts and "only one turn" not in prompts and "hi" not in prompts
    assert all(len(r.prompt) < 3000 for r in requests)
    first = next(r for r in requests if r.prompt.startswith("what"))
    assert first.output_len == tandem_counter.count("paris is the capital of france")
    fixed = load_requests(DatasetSpec(name="sharegpt", path=str(path), sharegpt_output_len=9), 3, tandem_counter)
    assert all(r.output_len == 9 for r in fixed)


def test_jsonl(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "one two three", "output_len": 5}\n\n{"prompt": "four five"}\n')
    requests = load_requests(DatasetSpec(name="custom", path=str(path), custom_output_len=11), 4, ApproximateCounter())
    assert sorted((r.prompt_len, r.output_len) for r in requests[:2]) == [(2, 11), (3, 5)]
    assert len(requests) == 4                                  # cycled to the count asked for


@pytest.mark.parametrize("content, match", [
    (None, "cannot read"), ("{not json", "not valid JSON"), ('{"a": 1}', "JSON list"),
    ("[]", "no usable conversation")])
def test_sharegpt_errors(tmp_path, content, match):
    path = tmp_path / "sg.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=match):
        load_requests(DatasetSpec(name="sharegpt", path=str(path)), 3, ApproximateCounter())


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{"text": "wrong key"}\n')
    with pytest.raises(DatasetError, match="line 2"):
        load_requests(DatasetSpec(name="jsonl", path=str(path)), 3, ApproximateCounter())


@pytest.mark.parametrize("changes, flag", [
    (dict(name="nope"), "--dataset-name"), (dict(name="sharegpt"), "--dataset-path"),
    (dict(random_input_len=0), "--random-input-len"), (dict(random_range_ratio=1.0), "--random-range-ratio"),
    (dict(random_prefix_len=-1), "--random-prefix-len")])
def test_spec_validation(changes, flag):
    with pytest.raises(BenchConfigError, match=flag):
        DatasetSpec(**changes)


def test_unknown_tokenizer_is_a_config_error():
    with pytest.raises(BenchConfigError, match="--tokenizer"):
        load_token_counter("no-such-model-or-dir")
