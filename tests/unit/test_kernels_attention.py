"""Paged decode attention, prefill attention and KV page writes against their torch references,
under Triton's interpreter at small, odd shapes (3 sequences of 1, 17 and 33 tokens, block 16,
GQA), on a page-major pool whose block stride is larger than a block."""

from __future__ import annotations

import importlib

import pytest
import torch

from tests.unit.kernel_interpreter import assert_close, interpreted, poisoned_allocations

MODULES = ("kernels.paged_decode_attention", "kernels.prefill_attention", "kernels.kv_page_write")


@pytest.fixture(scope="module")
def ops():
    with interpreted(*MODULES) as (decode, prefill, kv_write):
        yield decode, prefill, kv_write


def make_pool(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
              dtype: torch.dtype, layer: int = 1, num_layers: int = 2):
    """A page-major pool [blocks, layers, 2, block_size, kv_heads, head_dim] of random values,
    and one layer's key/value views of it."""
    pool = torch.randn(num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim).to(dtype)
    return pool, pool[:, layer, 0], pool[:, layer, 1]


def make_block_tables(seq_lens: list[int], block_size: int, num_blocks: int) -> torch.Tensor:
    """Distinct, shuffled blocks per sequence; padding entries point at block 0."""
    needed = [-(-n // block_size) for n in seq_lens]
    width = max(needed) + 1          # one spare column, as a batch padded to a longer sequence
    perm = torch.randperm(num_blocks)
    tables = torch.zeros(len(seq_lens), width, dtype=torch.int32)
    used = 0
    for i, n in enumerate(needed):
        tables[i, :n] = perm[used:used + n].int()
        used += n
    assert used <= num_blocks
    return tables


@pytest.mark.parametrize("dtype,num_heads,num_kv_heads,head_dim,partitions,min_tiles", [
    (torch.float32, 4, 2, 32, 1, 2),
    # group of 3 (padded); 33 tokens in 3 partitions of one tile, 17 in 2, 16 and 1 in one
    (torch.float16, 6, 2, 64, 3, 1),
    (torch.float32, 8, 1, 16, 4, 2),      # MQA; at least two tiles each: 33 tokens in 2
])
def test_paged_decode_attention_matches_reference(ops, dtype, num_heads, num_kv_heads, head_dim,
                                                  partitions, min_tiles):
    decode = ops[0]
    block_size, seq_lens = 16, [1, 16, 17, 33]
    _, key_cache, value_cache = make_pool(12, block_size, num_kv_heads, head_dim, dtype)
    tables = make_block_tables(seq_lens, block_size, 12)
    q = torch.randn(len(seq_lens), num_heads, head_dim).to(dtype)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    launch = decode.DecodeLaunch(block_n=16, partitions=partitions, min_tiles=min_tiles)
    ref = decode.paged_decode_attention_ref(q, key_cache, value_cache, tables, lens, 0.3)
    with poisoned_allocations():
        out = decode.paged_decode_attention(q, key_cache, value_cache, tables, lens, 0.3,
                                            use_triton=True, launch=launch)
    assert_close(out, ref)


def test_paged_decode_attention_merges_more_partitions_than_one_merge_step(ops):
    decode = ops[0]
    block_size, seq_lens = 16, [300, 5]     # 19 one-tile partitions: two reduction steps of 16
    _, key_cache, value_cache = make_pool(24, block_size, 2, 32, torch.float32)
    tables = make_block_tables(seq_lens, block_size, 24)
    q = torch.randn(len(seq_lens), 4, 32)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    launch = decode.DecodeLaunch(block_n=16, partitions=24, min_tiles=1)
    with poisoned_allocations():
        out = decode.paged_decode_attention(q, key_cache, value_cache, tables, lens, 0.3,
                                            use_triton=True, launch=launch)
    assert_close(out, decode.paged_decode_attention_ref(q, key_cache, value_cache, tables, lens,
                                                        0.3))


def test_decode_partitions_fill_the_gpu_from_the_batch_size(monkeypatch) -> None:
    # The module, not the package's function of the same name.
    decode = importlib.import_module("kernels.paged_decode_attention")
    monkeypatch.setattr(decode, "_sm_count", lambda device: 132)    # an H200's SMs
    cpu = torch.device("cpu")

    def partitions(num_seqs: int, max_context: int) -> int:
        return decode.default_launch(num_seqs, 8, max_context, 128, cpu).partitions

    # 3 programs per SM: 396 over 8 KV heads per sequence, at most one per 64-token tile.
    assert partitions(1, 4096) == 49 and partitions(1, 32768) == 49
    assert partitions(1, 256) == 4 and partitions(1, 16) == 1 and partitions(16, 4096) == 3
    assert partitions(32, 4096) == 1 and partitions(256, 4096) == 1 and partitions(0, 4096) == 64
    assert decode.decode_launch_variants(128)[1].partitions > 1


def test_decode_launch_rejects_an_unusable_split() -> None:
    from kernels.arguments import KernelArgumentError
    from kernels.paged_decode_attention import DecodeLaunch

    with pytest.raises(KernelArgumentError, match="launch.partitions"):
        DecodeLaunch(partitions=0)
    with pytest.raises(KernelArgumentError, match="launch.block_n"):
        DecodeLaunch(block_n=48)


@pytest.mark.parametrize("dtype,num_heads,num_kv_heads,q_lens,seq_lens", [
    (torch.float32, 4, 2, [1, 5, 33], [1, 17, 33]),      # a fresh prompt, a chunk after a prefix
    (torch.float16, 6, 2, [20, 3, 9], [20, 40, 9]),
])
def test_prefill_attention_matches_reference(ops, dtype, num_heads, num_kv_heads, q_lens,
                                             seq_lens):
    prefill = ops[1]
    block_size, head_dim = 16, 32
    _, key_cache, value_cache = make_pool(12, block_size, num_kv_heads, head_dim, dtype)
    tables = make_block_tables(seq_lens, block_size, 12)
    q = torch.randn(sum(q_lens), num_heads, head_dim).to(dtype)
    starts = torch.tensor([0] + q_lens, dtype=torch.int32).cumsum(0).int()
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    launch = prefill.PrefillLaunch(block_m=16, block_n=16, num_warps=4)
    ref = prefill.prefill_attention_ref(q, key_cache, value_cache, tables, starts, lens, 0.2)
    with poisoned_allocations():
        out = prefill.prefill_attention(q, key_cache, value_cache, tables, starts, lens, 0.2,
                                        use_triton=True, launch=launch)
    assert_close(out, ref)


def test_kv_page_write_scatters_into_pages(ops):
    kv_write = ops[2]
    pool, key_cache, value_cache = make_pool(6, 16, 3, 24, torch.float16)
    pool.fill_(float("nan"))
    expected = pool.clone()
    key = torch.randn(5, 3, 24).half()
    value = torch.randn(5, 3, 24).half()
    slots = torch.tensor([0, 17, -1, 95, 40], dtype=torch.int64)     # -1: a padding token
    kv_write.write_kv_pages_ref(key, value, expected[:, 1, 0], expected[:, 1, 1], slots)
    kv_write.write_kv_pages(key, value, key_cache, value_cache, slots, use_triton=True)
    assert torch.equal(pool.isnan(), expected.isnan())
    assert torch.equal(pool.nan_to_num(), expected.nan_to_num())


def test_kv_page_write_quantizes_to_int8(ops):
    kv_write = ops[2]
    pool = torch.full((4, 2, 2, 16, 2, 32), 77, dtype=torch.int8)
    scales = torch.full((4, 2, 2, 16, 2), float("nan"))
    expected, expected_scales = pool.clone(), scales.clone()
    key = torch.randn(7, 2, 32) * 3
    value = torch.randn(7, 2, 32)
    value[3] = 0.0                                          # an all-zero row: scale 0, codes 0
    slots = torch.randperm(64)[:7]
    kv_write.write_kv_pages_ref(key, value, expected[:, 0, 0], expected[:, 0, 1], slots,
                                expected_scales[:, 0, 0], expected_scales[:, 0, 1])
    kv_write.write_kv_pages(key, value, pool[:, 0, 0], pool[:, 0, 1], slots,
                            scales[:, 0, 0], scales[:, 0, 1], use_triton=True)
    assert torch.equal(pool, expected)
    assert torch.equal(scales.isnan(), expected_scales.isnan())
    assert torch.equal(scales.nan_to_num(), expected_scales.nan_to_num())
    written = expected[:, 0, 0].reshape(-1, 2, 32)[slots].float()
    dequantized = written * expected_scales[:, 0, 0].reshape(-1, 2)[slots][..., None]
    assert (dequantized - key).abs().max() <= key.abs().max() / 127


def test_wrappers_reject_bad_arguments(ops):
    decode, prefill, kv_write = ops
    from kernels.arguments import KernelArgumentError
    _, key_cache, value_cache = make_pool(4, 16, 2, 32, torch.float32)
    q = torch.randn(2, 3, 32)                         # 3 heads do not share 2 KV heads evenly
    tables = torch.zeros(2, 2, dtype=torch.int32)
    lens = torch.tensor([3, 4], dtype=torch.int32)
    with pytest.raises(KernelArgumentError, match="num_kv_heads"):
        decode.paged_decode_attention(q, key_cache, value_cache, tables, lens, 1.0)
    with pytest.raises(KernelArgumentError, match="block_tables"):
        decode.paged_decode_attention(torch.randn(2, 4, 32), key_cache, value_cache,
                                      tables.long(), lens, 1.0)
    with pytest.raises(KernelArgumentError, match="query_start_loc"):
        prefill.prefill_attention(torch.randn(7, 4, 32), key_cache, value_cache, tables,
                                  torch.tensor([0, 7], dtype=torch.int32), lens, 1.0)
    with pytest.raises(KernelArgumentError, match="key_scale_cache"):
        kv_write.write_kv_pages(torch.randn(1, 2, 32), torch.randn(1, 2, 32),
                                key_cache.to(torch.int8), value_cache.to(torch.int8),
                                torch.zeros(1, dtype=torch.int64))


def test_attention_writes_into_a_given_output(ops):
    """`out`: a strided view of a larger buffer (as a CUDA graph's persistent one) is written in
    place by both kernels and the references; rows outside it are untouched; a wrong one is
    refused by name."""
    decode, prefill, _ = ops
    from kernels.arguments import KernelArgumentError
    block_size, seq_lens, q_lens = 16, [17, 33], [5, 9]
    _, key_cache, value_cache = make_pool(8, block_size, 2, 32, torch.float32)
    tables = make_block_tables(seq_lens, block_size, 8)
    lens = torch.tensor(seq_lens, dtype=torch.int32)
    starts = torch.tensor([0, 5, 14], dtype=torch.int32)
    cases = [
        (torch.randn(2, 4, 32), lambda q, **kw: decode.paged_decode_attention(
            q, key_cache, value_cache, tables, lens, 0.3,
            launch=decode.DecodeLaunch(block_n=16, partitions=2, min_tiles=1), **kw)),
        (torch.randn(14, 4, 32), lambda q, **kw: prefill.prefill_attention(
            q, key_cache, value_cache, tables, starts, lens, 0.3,
            launch=prefill.PrefillLaunch(block_m=16, block_n=16, num_warps=4), **kw)),
    ]
    for q, attend in cases:
        expected = attend(q, use_triton=False)
        for use_triton in (False, True):
            buffer = torch.full((q.shape[0] + 3, 6, 32), 7.0)    # more rows and heads than q
            view = buffer[1:q.shape[0] + 1, 1:5]
            assert attend(q, use_triton=use_triton, out=view) is view
            assert_close(view, expected)
            untouched = buffer.clone()
            untouched[1:q.shape[0] + 1, 1:5] = 7.0
            assert bool((untouched == 7.0).all())
        with pytest.raises(KernelArgumentError, match="out"):
            attend(q, out=torch.empty(q.shape[0] + 1, 4, 32))
        with pytest.raises(KernelArgumentError, match="out"):
            attend(q, out=torch.empty(q.shape, dtype=torch.float64))
