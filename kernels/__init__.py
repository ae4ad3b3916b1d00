"""Tandem's kernel library: one op per module, each with a torch `*_ref` that is its
specification. Public wrappers run the Triton kernel on CUDA tensors and the reference elsewhere
(`use_triton=True` forces the kernel, e.g. on CPU under Triton's interpreter)."""

from kernels.arguments import KernelArgumentError
from kernels.gemv import gemv, gemv_launch
from kernels.kv_page_write import write_kv_pages
from kernels.paged_decode_attention import paged_decode_attention
from kernels.prefill_attention import prefill_attention
from kernels.quantize_rows import quantize_rows
from kernels.rms_norm import rms_norm
from kernels.rotary import rotary
from kernels.rotary_kv_write import rotary_kv_write
from kernels.silu_and_mul import silu_and_mul
from kernels.w8a8_gemm import w8a8_gemm
from kernels.w4a16_gemm import w4a16_gemm
from kernels.w8a16_gemm import w8a16_gemm

__all__ = ["KernelArgumentError", "gemv", "gemv_launch", "paged_decode_attention",
           "prefill_attention", "quantize_rows", "rms_norm", "rotary", "rotary_kv_write",
           "silu_and_mul", "w4a16_gemm", "w8a16_gemm", "w8a8_gemm", "write_kv_pages"]
