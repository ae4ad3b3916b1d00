"""quantization_config of GPTQ and AWQ checkpoints, as transformers, Optimum, AutoGPTQ,
GPTQModel and AutoAWQ write it -> Int4Scheme; unsupported variants are refused naming the field."""

from __future__ import annotations

import pytest

from services.engine.config import Int4Scheme
from services.engine.errors import UnsupportedModelError
from services.engine.model.quantized_linear import quantization_scheme

GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True, "sym": True,
        "damp_percent": 0.01, "true_sequential": True, "static_groups": False,
        "model_name_or_path": None, "model_file_base_name": None}
AWQ = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True,
       "version": "gemm", "modules_to_not_convert": None}


def scheme(spec: dict) -> Int4Scheme:
    return quantization_scheme({"quantization_config": spec})


def test_gptq_configs_as_written():
    assert scheme(GPTQ) == Int4Scheme("gptq", 128, zeros_minus_one=True)   # v1 by default
    assert scheme({**GPTQ, "checkpoint_format": "gptq"}).zeros_minus_one
    v2 = scheme({**GPTQ, "checkpoint_format": "gptq_v2", "pack_dtype": "int32", "sym": False})
    assert v2 == Int4Scheme("gptq", 128, zeros_minus_one=False)
    assert scheme({**GPTQ, "group_size": -1}).group_size is None
    blocks = [["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
              ["self_attn.o_proj"], ["mlp.up_proj", "mlp.gate_proj"], ["mlp.down_proj"]]
    assert scheme({**GPTQ, "modules_in_block_to_quantize": blocks}).method == "gptq"


def test_awq_configs_as_written():
    assert scheme(AWQ) == Int4Scheme("awq", 128)
    autoawq = {"quant_method": "awq", "zero_point": True, "q_group_size": 64, "w_bit": 4,
               "version": "GEMM"}
    assert scheme(autoawq) == Int4Scheme("awq", 64)
    assert scheme({**AWQ, "modules_to_not_convert": ["visual"]}).method == "awq"


@pytest.mark.parametrize("spec,field", [
    ({**GPTQ, "bits": 8}, "bits"),
    ({**GPTQ, "bits": 3}, "bits"),
    ({**GPTQ, "checkpoint_format": "marlin"}, "checkpoint_format"),
    ({**GPTQ, "is_marlin_format": True}, "is_marlin_format"),
    ({**GPTQ, "pack_dtype": "int16"}, "pack_dtype"),
    ({**GPTQ, "group_size": 0}, "group_size"),
    ({**GPTQ, "modules_in_block_to_quantize": [["self_attn.q_proj"]]},
     "modules_in_block_to_quantize"),
    ({**AWQ, "version": "gemv"}, "version"),
    ({**AWQ, "version": "gemv_fast"}, "version"),
    ({**AWQ, "version": "exllama"}, "version"),
    ({**AWQ, "zero_point": False}, "zero_point"),
    ({**AWQ, "w_bit": 3, "bits": None}, "w_bit"),
    ({**AWQ, "group_size": -1}, "group_size"),
    ({**AWQ, "modules_to_not_convert": ["mlp.down_proj"]}, "modules_to_not_convert"),
])
def test_unsupported_variants_name_the_field(spec, field):
    with pytest.raises(UnsupportedModelError, match=rf"quantization_config\.{field}="):
        scheme(spec)


def test_int4_scheme_and_model_config_validate():
    from services.engine.config import ModelConfig
    from services.engine.errors import ConfigError
    with pytest.raises(ConfigError, match="method"):
        Int4Scheme("exl2")
    with pytest.raises(ConfigError, match="group_size"):
        Int4Scheme("gptq", 0)
    with pytest.raises(ConfigError, match="GPTQ v1"):
        Int4Scheme("awq", 128, zeros_minus_one=True)
    base = dict(architecture="LlamaForCausalLM", vocab_size=8, hidden_size=8,
                intermediate_size=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8)
    assert ModelConfig(**base, quantization=Int4Scheme("awq", 32)).quantization.name == "awq-w4a16"
    with pytest.raises(ConfigError, match="quantization"):
        ModelConfig(**base, quantization="w4a16")
