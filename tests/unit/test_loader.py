"""Loading checkpoints and presets: sharding, dtypes, EOS ids, and the typed errors for what
cannot be served."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from services.engine.errors import ConfigError, ModelNotFoundError, UnsupportedModelError
from services.engine.loader import LoadedModel, load_model, load_tokenizer
from tests.helpers.hf_checkpoints import make_hf_checkpoint
from tests.helpers.paged_batch import PagedHarness, PagedSequence


def prompt_logits(loaded: LoadedModel, text: str = "the cat sat on the mat") -> torch.Tensor:
    ids = loaded.tokenizer.encode(text)
    return PagedHarness(loaded.model, loaded.config).step([(PagedSequence(ids), len(ids))])


def state(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in loaded.model.state_dict().items()}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("ckpt"), "llama3")


def test_sharded_checkpoint_loads_the_same_model(tmp_path, llama_dir):
    sharded = make_hf_checkpoint(tmp_path, "llama3", sharded=True)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 2
    a, b = load_model(str(llama_dir)), load_model(str(sharded))
    for name, tensor in state(a).items():
        assert torch.equal(tensor, state(b)[name]), name


def test_eos_ids_come_from_generation_config(llama_dir):
    loaded = load_model(str(llama_dir))
    vocab = loaded.tokenizer.backend.get_vocab()
    assert loaded.eos_token_ids == (vocab["<|eos|>"], vocab["<|end|>"])
    assert loaded.tokenizer.eos_token_ids == loaded.eos_token_ids


def test_eos_falls_back_to_the_tokenizer(tmp_path):
    path = make_hf_checkpoint(tmp_path, "llama2", eos_token_id=None)
    (path / "generation_config.json").unlink()
    loaded = load_model(str(path))
    assert loaded.eos_token_ids == (loaded.tokenizer.backend.token_to_id("<|eos|>"),)


@pytest.mark.parametrize("saved, name", [(torch.bfloat16, "bfloat16"), (torch.float16, "float16")])
def test_half_precision_checkpoint_runs_in_fp32_on_cpu_unless_forced(tmp_path, saved, name):
    path = make_hf_checkpoint(tmp_path, "qwen2", dtype=saved)
    assert json.loads((path / "config.json").read_text())["dtype"] == name
    default = load_model(str(path))
    assert default.config.dtype == "float32"
    assert {p.dtype for p in default.model.parameters()} == {torch.float32}
    forced = load_model(str(path), dtype=name)
    assert forced.config.dtype == name
    assert {p.dtype for p in forced.model.parameters()} == {saved}
    # Half weights widened to fp32 are exact, so the forced run differs only by its arithmetic.
    logits16, logits32 = prompt_logits(forced), prompt_logits(default)
    assert logits16.dtype == torch.float32
    torch.testing.assert_close(logits16, logits32, atol=0.1, rtol=0)


def test_unknown_dtype_is_a_config_error(llama_dir):
    with pytest.raises(ConfigError, match="dtype"):
        load_model(str(llama_dir), dtype="int4")


def test_unknown_name_and_missing_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="tiny-random"):
        load_model("no-such-preset")
    with pytest.raises(ModelNotFoundError):
        load_model(str(tmp_path / "absent"))


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json", "model.safetensors"])
def test_missing_file(tmp_path, missing):
    path = make_hf_checkpoint(tmp_path, "llama2")
    (path / missing).unlink()
    with pytest.raises(ModelNotFoundError, match=missing.split(".")[0]):
        load_model(str(path))


def test_missing_shard_is_named(tmp_path):
    path = make_hf_checkpoint(tmp_path, "llama2", sharded=True)
    shard = sorted(path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(ModelNotFoundError, match=shard.name):
        load_model(str(path))


def test_pickle_weights_are_refused(tmp_path):
    path = make_hf_checkpoint(tmp_path, "llama2")
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(UnsupportedModelError, match="safetensors"):
        load_model(str(path))


def edit_config(path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("changes, message", [
    ({"architectures": ["GPT2LMHeadModel"]}, "GPT2LMHeadModel"),
    ({"architectures": []}, "architecture"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "yarn"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 4.0}}, "low_freq"),
    ({"num_key_value_heads": 4}, "num_kv_heads"),
    ({"dtype": "int8"}, "int8"),
])
def test_unsupported_config(tmp_path, changes, message):
    path = make_hf_checkpoint(tmp_path, "llama2")
    edit_config(path, **changes)
    with pytest.raises(UnsupportedModelError, match=message):
        load_model(str(path))


def test_missing_and_unexpected_tensors(tmp_path):
    path = make_hf_checkpoint(tmp_path, "llama2")
    tensors = load_file(path / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(UnsupportedModelError, match="qkv_proj"):
        load_model(str(path))
    tensors["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(72, 72)
    tensors["model.layers.0.extra.weight"] = torch.zeros(3)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(UnsupportedModelError, match="extra"):
        load_model(str(path))


def test_wrong_tensor_shape_is_named(tmp_path):
    path = make_hf_checkpoint(tmp_path, "llama2")
    tensors = load_file(path / "model.safetensors")
    tensors["model.norm.weight"] = torch.ones(71)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(UnsupportedModelError, match=r"model\.norm\.weight.*71"):
        load_model(str(path))


def test_tied_checkpoint_that_also_stores_lm_head(tmp_path):
    path = make_hf_checkpoint(tmp_path, "qwen2")
    tensors = load_file(path / "model.safetensors")
    reference = prompt_logits(load_model(str(path)))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, path / "model.safetensors")
    torch.testing.assert_close(prompt_logits(load_model(str(path))), reference, atol=0, rtol=0)


def test_load_tokenizer_reads_no_weights(llama_dir):
    loaded = load_tokenizer(str(llama_dir))
    assert loaded.config == load_model(str(llama_dir), dtype="float32").config
    assert loaded.tokenizer.encode("hi") == load_model(str(llama_dir)).tokenizer.encode("hi")
    preset = load_tokenizer("tiny-random")
    assert preset.config.vocab_size == preset.tokenizer.vocab_size
