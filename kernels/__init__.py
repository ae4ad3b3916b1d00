"""Tandem's kernel library: one op per module, each with a torch `*_ref` that is its
specification. Public wrappers run the Triton kernel on CUDA tensors and the reference elsewhere."""

from kernels.kv_page_write import write_kv_pages
from kernels.paged_decode_attention import paged_decode_attention
from kernels.prefill_attention import prefill_attention
from kernels.rms_norm import rms_norm
from kernels.rotary import rotary
from kernels.silu_and_mul import silu_and_mul

__all__ = ["paged_decode_attention", "prefill_attention", "rms_norm", "rotary", "silu_and_mul",
           "write_kv_pages"]
