"""Rotary + KV page write in one kernel, under Triton's interpreter, against its two halves'
references: q rotated in place, rotary(k) and v in their slots, padded rows (slot -1) writing
nothing, and every other page left as it was."""

from __future__ import annotations

import pytest
import torch

from tests.unit.kernel_interpreter import assert_close, interpreted, poisoned_allocations

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, BLOCK_SIZE, NUM_BLOCKS = 6, 2, 24, 4, 7


@pytest.fixture(scope="module")
def op():
    with interpreted("kernels.rotary", "kernels.rotary_kv_write") as modules:
        yield modules[1]


def _inputs(num_tokens: int, dtype: torch.dtype, num_heads: int = NUM_HEADS):
    # q, k and v as slices of one fused qkv projection, the way the model produces them.
    qkv = torch.randn(num_tokens, (num_heads + 2 * NUM_KV_HEADS) * HEAD_DIM).to(dtype)
    q, k, v = qkv.split((num_heads * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM, NUM_KV_HEADS * HEAD_DIM),
                        dim=-1)
    q = q.view(num_tokens, num_heads, HEAD_DIM)
    k = k.view(num_tokens, NUM_KV_HEADS, HEAD_DIM)
    v = v.view(num_tokens, NUM_KV_HEADS, HEAD_DIM)
    angles = torch.rand(50, HEAD_DIM // 2) * 6.3
    cos_sin = torch.cat((angles.cos(), angles.sin()), dim=-1)
    positions = torch.randint(0, 50, (num_tokens,))
    # One layer's slice of a page-major pool [blocks, layers, 2, block, kv_heads, head_dim].
    pool = torch.randn(NUM_BLOCKS, 3, 2, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM).to(dtype)
    slots = torch.randperm(NUM_BLOCKS * BLOCK_SIZE)[:num_tokens]
    slots[1] = -1
    return q, k, v, positions, cos_sin, pool, slots


@pytest.mark.parametrize("dtype,num_heads", [(torch.float32, NUM_HEADS), (torch.float16, NUM_HEADS),
                                             (torch.float32, NUM_KV_HEADS)])   # GQA, MHA
def test_rotates_q_in_place_and_writes_rotated_k_and_v(op, dtype, num_heads):
    q, k, v, positions, cos_sin, pool, slots = _inputs(9, dtype, num_heads)
    k_before, v_before = k.clone(), v.clone()
    expected_q = q.clone()
    expected_pool = pool.clone()
    layer, expected_layer = pool[:, 1], expected_pool[:, 1]
    op.rotary_kv_write_ref(expected_q, k, v, positions, cos_sin, expected_layer[:, 0],
                           expected_layer[:, 1], slots)
    with poisoned_allocations():
        out = op.rotary_kv_write(q, k, v, positions, cos_sin, layer[:, 0], layer[:, 1], slots,
                                 use_triton=True)
    assert out is q
    assert_close(q, expected_q)
    # q rotates in place inside the fused projection: its k and v columns are left as they were.
    assert torch.equal(k, k_before) and torch.equal(v, v_before)
    assert_close(pool, expected_pool)
    # Other layers' pages and the rows of the skipped slot are untouched.
    assert torch.equal(pool[:, 0], expected_pool[:, 0])
    assert torch.equal(pool[:, 2], expected_pool[:, 2])


def test_bad_arguments_are_named():
    import kernels

    q, k, v, positions, cos_sin, pool, slots = _inputs(3, torch.float32)
    key_cache, value_cache = pool[:, 0, 0], pool[:, 0, 1]
    with pytest.raises(kernels.KernelArgumentError, match="^v: "):
        kernels.rotary_kv_write(q, k, v[:, :1], positions, cos_sin, key_cache, value_cache, slots)
    with pytest.raises(kernels.KernelArgumentError, match="^key_cache: "):
        kernels.rotary_kv_write(q, k, v, positions, cos_sin, key_cache.to(torch.int8),
                                value_cache.to(torch.int8), slots)
    with pytest.raises(kernels.KernelArgumentError, match="^k: 2 KV heads do not divide 5"):
        kernels.rotary_kv_write(q[:, :5], k, v, positions, cos_sin, key_cache, value_cache,
                                slots)
    with pytest.raises(kernels.KernelArgumentError, match="^slot_mapping: "):
        kernels.rotary_kv_write(q, k, v, positions, cos_sin, key_cache, value_cache, slots[:2])
    with pytest.raises(kernels.KernelArgumentError, match="positions on meta"):
        kernels.rotary_kv_write(q, k, v, positions.to("meta"), cos_sin, key_cache, value_cache,
                                slots)
