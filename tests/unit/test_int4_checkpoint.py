"""4-bit checkpoints of the tiny preset, written by `tandem quantize` (GPTQ, AWQ) and, for act
order, by the same quantize-and-pack code over permuted input channels: the loader builds INT4
projections from their quantization_config, the logits match the fp32 model made of the weights
an independent decoding of the checkpoint's tensors gives, and the engine generates from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from orchestration.cli import main as tandem
from orchestration.commands.quantize import is_quantized_projection, write_quantized_checkpoint
from services.engine.config import CacheConfig, EngineConfig
from services.engine.engine import LLMEngine
from services.engine.loader import load_model, model_source
from services.engine.model.int4_layouts import gptq_tensors
from services.engine.model.int4_linear import Int4Linear
from services.engine.model.int4_rtn import quantize_gptq_rtn
from services.engine.model.registry import build_model
from services.engine.sampling_params import SamplingParams
from tests.helpers.int4_decoding import decode_awq, decode_gptq
from tests.helpers.paged_batch import PagedHarness, PagedSequence

PROMPT = list(range(3, 60, 2))
GPTQ_GROUP, AWQ_GROUP = 32, 8     # the tiny preset's 96 and 232 channels: AWQ needs a divisor


def prompt_logits(model, config) -> torch.Tensor:
    return PagedHarness(model, config).step([(PagedSequence(PROMPT), len(PROMPT))])


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            tensors.update({name: f.get_tensor(name) for name in f.keys()})
    return tensors


def dequantized_weights(path: Path):
    """The checkpoint as an fp32 one: every projection decoded by tests/helpers/int4_decoding."""
    spec = json.loads((path / "config.json").read_text())["quantization_config"]
    tensors = checkpoint_tensors(path)
    for name, tensor in tensors.items():
        module, _, param = name.rpartition(".")
        if param == "qweight":
            get = lambda suffix: tensors[f"{module}.{suffix}"]
            if spec["quant_method"] == "gptq":
                v1 = spec.get("checkpoint_format", "gptq") == "gptq"
                weight = decode_gptq(tensor, get("qzeros"), get("scales"), get("g_idx"), v1)
            else:
                weight = decode_awq(tensor, get("qzeros"), get("scales"), spec["group_size"])
            yield f"{module}.weight", weight
        elif param not in ("qzeros", "scales", "g_idx"):
            yield name, tensor.float()


def write_act_order_checkpoint(out: Path) -> Path:
    """A GPTQ desc_act checkpoint: each projection's input channels quantized in a shuffled
    order, g_idx[perm[j]] = j // group_size, as GPTQ's act order lays them out. Projections of
    one input (q, k, v; gate, up) share the order, as they share GPTQ's Hessian."""
    write_quantized_checkpoint("tiny-random", out, "gptq-w4a16", group_size=GPTQ_GROUP, sym=False)
    source = model_source("tiny-random")
    config = load_model("tiny-random").config
    gen = torch.Generator().manual_seed(7)
    perms: dict[tuple[str, int], torch.Tensor] = {}
    tensors = {}
    for name, weight in source.weights(config, torch.device("cpu")):
        if not is_quantized_projection(name):
            tensors[name] = weight.to(torch.bfloat16)
            continue
        k = weight.shape[1]
        key = (name.rpartition(".")[0].rpartition(".")[0], k)     # the layer's block and input
        perm = perms.setdefault(key, torch.randperm(k, generator=gen))
        groups = quantize_gptq_rtn(weight[:, perm], GPTQ_GROUP, sym=False)
        codes, g_idx = torch.empty_like(groups.codes), torch.empty(k, dtype=torch.int64)
        codes[perm], g_idx[perm] = groups.codes, torch.arange(k) // GPTQ_GROUP
        packed = gptq_tensors(codes, groups.zeros, groups.scales, g_idx)
        module = name.removesuffix(".weight")
        tensors.update({f"{module}.{key}": value for key, value in packed.items()})
    for file in out.glob("*.safetensors"):
        file.unlink()
    (out / "model.safetensors.index.json").unlink()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config_json = json.loads((out / "config.json").read_text())
    config_json["quantization_config"]["desc_act"] = True
    (out / "config.json").write_text(json.dumps(config_json))
    return out


@pytest.fixture(params=["gptq-w4a16", "awq-w4a16", "gptq-act-order"])
def checkpoint(request, tmp_path) -> Path:
    out = tmp_path / request.param
    if request.param == "gptq-act-order":
        return write_act_order_checkpoint(out)
    group = GPTQ_GROUP if request.param.startswith("gptq") else AWQ_GROUP
    assert tandem(["quantize", "--model", "tiny-random", "--out", str(out), "--scheme",
                   request.param, "--group-size", str(group)]) == 0
    return out


def test_int4_checkpoint_matches_its_dequantized_model_and_generates(checkpoint):
    quantized = load_model(str(checkpoint))
    method = json.loads((checkpoint / "config.json").read_text())["quantization_config"][
        "quant_method"]
    assert quantized.config.quantization.method == method
    projections = [m for m in quantized.model.modules() if isinstance(m, Int4Linear)]
    assert len(projections) == 4 * quantized.config.num_layers
    act_order = checkpoint.name == "gptq-act-order"
    assert all(p.act_order == act_order for p in projections)
    assert all((p.input_perm is not None) == act_order for p in projections)   # rows sorted

    plain = quantized.config.replace(quantization=None)
    dequantized = build_model(plain)
    dequantized.load_weights(dequantized_weights(checkpoint))
    logits = prompt_logits(quantized.model, quantized.config)
    expected = prompt_logits(dequantized, plain)
    rel = ((logits - expected).norm() / expected.norm()).item()
    assert rel < 1e-4, f"INT4 logits differ from the dequantized model's by {rel:.2e}"
    # And 4-bit rounding keeps the model close to the unquantized one.
    original = prompt_logits(load_model("tiny-random").model, plain)
    assert torch.nn.functional.cosine_similarity(logits, original, dim=-1).min() > 0.95

    engine = LLMEngine(EngineConfig(model=str(checkpoint), cache=CacheConfig(num_blocks=64)))
    engine.add_request("r", PROMPT, SamplingParams(temperature=0.0, max_tokens=6,
                                                   ignore_eos=True))
    tokens = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens += output.new_token_ids
    assert len(tokens) == 6
    assert tokens[0] == int(logits[-1].argmax())


def test_written_checkpoints_carry_the_ecosystem_config_and_shard(tmp_path):
    gptq = write_quantized_checkpoint("tiny-random", tmp_path / "g", "gptq-w4a16",
                                      shard_bytes=100_000, group_size=64, sym=False)
    spec = json.loads((gptq / "config.json").read_text())["quantization_config"]
    assert {k: spec[k] for k in ("quant_method", "bits", "group_size", "sym", "desc_act",
                                 "checkpoint_format")} == {
        "quant_method": "gptq", "bits": 4, "group_size": 64, "sym": False, "desc_act": False,
        "checkpoint_format": "gptq"}
    assert json.loads((gptq / "quantize_config.json").read_text()) == spec
    assert len(list(gptq.glob("*.safetensors"))) > 1
    tensors = checkpoint_tensors(gptq)
    prefix = "model.layers.0.mlp.down_proj"
    assert {n for n in tensors if n.startswith(prefix)} == {
        f"{prefix}.{t}" for t in ("qweight", "qzeros", "scales", "g_idx")}
    assert tensors[f"{prefix}.qweight"].shape == (232 // 8, 96)
    assert tensors[f"{prefix}.qzeros"].shape == (4, 96 // 8)          # ceil(232 / 64) groups
    assert tensors[f"{prefix}.scales"].dtype == torch.float16
    assert load_model(str(gptq)).config.quantization.group_size == 64

    awq = write_quantized_checkpoint("tiny-random", tmp_path / "a", "awq-w4a16", group_size=8)
    spec = json.loads((awq / "config.json").read_text())["quantization_config"]
    assert spec == {"quant_method": "awq", "bits": 4, "group_size": 8, "zero_point": True,
                    "version": "gemm", "modules_to_not_convert": None}
    tensors = checkpoint_tensors(awq)
    assert tensors[f"{prefix}.qweight"].shape == (232, 96 // 8)
    assert f"{prefix}.g_idx" not in tensors


def test_awq_refuses_a_group_size_that_does_not_divide_the_input(tmp_path):
    from services.engine.errors import ConfigError
    with pytest.raises(ConfigError, match="--group-size 32"):
        write_quantized_checkpoint("tiny-random", tmp_path / "a", "awq-w4a16", group_size=32)


@pytest.mark.parametrize("scheme,group,side_file,spec", [
    ("gptq-w4a16", 32, "quantize_config.json",
     {"bits": 4, "group_size": 32, "desc_act": False, "sym": True}),       # AutoGPTQ < 0.5
    ("awq-w4a16", 8, "quant_config.json",
     {"zero_point": True, "q_group_size": 8, "w_bit": 4, "version": "GEMM"}),   # AutoAWQ
])
def test_quantization_read_from_the_tools_own_file(tmp_path, scheme, group, side_file, spec):
    out = write_quantized_checkpoint("tiny-random", tmp_path / "q", scheme, group_size=group)
    config = json.loads((out / "config.json").read_text())
    del config["quantization_config"]
    (out / "config.json").write_text(json.dumps(config))
    (out / "quantize_config.json").unlink(missing_ok=True)
    (out / side_file).write_text(json.dumps(spec))
    loaded = load_model(str(out))
    assert loaded.config.quantization.name == scheme
    assert loaded.config.quantization.group_size == group
