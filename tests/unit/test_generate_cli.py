"""`tandem generate`: in-process through orchestration.cli.main, and once as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orchestration.cli import main
from services.engine.presets import tiny_random_tokenizer


def generate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["generate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_output(capsys):
    code, out, err = generate(capsys, "--json", "--max-tokens", "6", "--temperature", "0",
                              "--ignore-eos", "Hello, Tandem")
    assert code == 0 and err == ""
    result = json.loads(out)
    assert result["prompt_token_ids"] == tiny_random_tokenizer().encode("Hello, Tandem")
    assert len(result["token_ids"]) == 6 and result["finish_reason"] == "length"
    assert result["text"] == tiny_random_tokenizer().decode(result["token_ids"])
    assert result["timings"]["ttft_s"] >= 0


def test_streams_text_and_seeds_reproduce(capsys):
    args = ("--max-tokens", "8", "--temperature", "0.8", "--top-k", "40", "--top-p", "0.9",
            "--seed", "5", "--ignore-eos", "Once upon a time")
    code, streamed, _ = generate(capsys, *args)
    _, as_json, _ = generate(capsys, "--json", *args)
    assert code == 0 and streamed == json.loads(as_json)["text"] + "\n"


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1", "hi"], "temperature"),
    (["--max-tokens", "0", "hi"], "max_tokens"),
    (["--top-p", "0", "hi"], "top_p"),
    (["--model", "no-such-model", "hi"], "no-such-model"),
    (["--max-tokens", "5000", "hi"], "max_model_len"),
])
def test_bad_input_is_one_line_and_exit_code_2(capsys, args, message):
    code, out, err = generate(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("tandem generate:") and message in err


def test_subprocess_json():
    proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "generate", "--json",
                           "--max-tokens", "4", "--temperature", "0", "--ignore-eos", "hi"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["token_ids"]) == 4 and result["finish_reason"] == "length"
