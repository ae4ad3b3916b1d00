"""The sampler: greedy, seeded reproducibility independent of the batch, top-k/top-p only ever
choosing allowed tokens (property tests), logprobs; and SamplingParams validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from services.engine.errors import InvalidRequestError
from services.engine.sampler import Sampler, SamplingRow, counter_uniform, filter_logits, row_seed
from services.engine.sampling_params import SamplingParams


def rows(*params: SamplingParams, index: int = 0) -> list[SamplingRow]:
    return [SamplingRow(p, index) for p in params]


def test_greedy_is_argmax():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(1))
    out = Sampler()(logits, rows(*[SamplingParams(temperature=0)] * 5))
    assert torch.equal(out.token_ids, logits.argmax(-1))
    assert out.logprobs is None


def test_greedy_rows_stay_greedy_in_a_mixed_batch():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(2))
    params = [SamplingParams(temperature=0), SamplingParams(temperature=5.0)] * 2
    out = Sampler()(logits, rows(*params))
    assert out.token_ids[0] == logits[0].argmax() and out.token_ids[2] == logits[2].argmax()


def test_seeded_rows_do_not_depend_on_the_batch_or_the_engine_seed():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 200, generator=gen)
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234)
    alone = Sampler(seed=0)(logits[2:3], [SamplingRow(seeded, 7)]).token_ids[0]
    others = [SamplingParams(temperature=0.7, seed=s) for s in (1, 2)] + [SamplingParams()] * 3
    batch = others[:2] + [seeded] + others[2:]
    mixed = Sampler(seed=99)(logits, [SamplingRow(p, 7) for p in batch]).token_ids[2]
    assert alone == mixed


def test_seeded_sampling_follows_the_output_index():
    logits = torch.zeros(1, 1000)                  # uniform: the draw alone picks the token
    params = SamplingParams(temperature=1.0, seed=5)
    draws = [Sampler()(logits, rows(params, index=i)).token_ids.item() for i in range(8)]
    again = [Sampler(seed=77)(logits, rows(params, index=i)).token_ids.item() for i in range(8)]
    assert draws == again and len(set(draws)) > 4


def test_seeded_sampling_matches_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    draws = [Sampler()(logits, rows(SamplingParams(seed=9), index=i)).token_ids.item()
             for i in range(600)]
    share = [draws.count(t) / len(draws) for t in range(3)]
    assert share[0] == pytest.approx(0.7, abs=0.08) and share[2] == pytest.approx(0.1, abs=0.06)


def test_unseeded_sampling_matches_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]] * 600))
    draws = Sampler(seed=4)(logits, rows(*[SamplingParams()] * 600)).token_ids.tolist()
    share = [draws.count(t) / len(draws) for t in range(3)]
    assert share[0] == pytest.approx(0.7, abs=0.08) and share[2] == pytest.approx(0.1, abs=0.06)


def test_unseeded_rows_vary():
    logits = torch.zeros(1, 1000)
    sampler = Sampler(seed=1)
    draws = {sampler(logits, rows(SamplingParams())).token_ids.item() for _ in range(10)}
    assert len(draws) > 5


def test_row_seed_spreads_nearby_inputs():
    assert len({row_seed(s, i) for s in range(20) for i in range(20)}) == 400
    assert all(0 <= row_seed(s, 3) < 2**63 for s in (0, 2**63 - 1))


logit_rows = st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=40)


@settings(max_examples=150, deadline=None)
@given(values=logit_rows, top_k=st.integers(1, 45), temperature=st.floats(0.05, 3.0),
       seed=st.integers(0, 2**40), index=st.integers(0, 1000))
def test_top_k_only_returns_the_k_most_likely(values, top_k, temperature, seed, index):
    logits = torch.tensor([values])
    params = SamplingParams(temperature=temperature, top_k=top_k, seed=seed)
    token = Sampler()(logits, rows(params, index=index)).token_ids.item()
    kth = logits[0].sort(descending=True).values[min(top_k, len(values)) - 1]
    assert logits[0, token] >= kth


@settings(max_examples=150, deadline=None)
@given(values=logit_rows, top_p=st.floats(0.01, 1.0), temperature=st.floats(0.05, 3.0),
       seed=st.integers(0, 2**40))
def test_top_p_only_returns_the_nucleus(values, top_p, temperature, seed):
    logits = torch.tensor([values])
    params = SamplingParams(temperature=temperature, top_p=top_p, seed=seed)
    token = Sampler()(logits, rows(params)).token_ids.item()
    probs = (logits[0] / temperature).softmax(-1)
    # The nucleus: tokens whose more-likely predecessors hold less than top_p of the mass.
    mass_above = probs[probs > probs[token]].sum()
    assert mass_above < top_p + 1e-5


@settings(max_examples=60, deadline=None)
@given(values=st.lists(logit_rows, min_size=1, max_size=4), data=st.data())
def test_filter_keeps_at_least_one_token_per_row(values, data):
    width = min(len(r) for r in values)
    logits = torch.tensor([r[:width] for r in values])
    params = [SamplingParams(top_k=data.draw(st.integers(0, 50)), top_p=data.draw(st.floats(0.01, 1.0)),
                             temperature=data.draw(st.floats(0.05, 2.0))) for _ in values]
    scores = filter_logits(logits, rows(*params))
    assert torch.isfinite(scores).any(dim=-1).all()


def _kept_literally(values: torch.Tensor, params: SamplingParams) -> set[int]:
    """One row's allowed tokens, from the definitions: the top_k largest scores, then the
    smallest set of the most likely whose renormalised mass reaches top_p."""
    scores = values / (params.temperature or 1.0)
    order = scores.sort(descending=True).indices.tolist()
    if params.top_k_enabled:
        order = order[:params.top_k]
    if params.top_p < 1.0:
        probs = scores[order].softmax(-1).tolist()
        mass, nucleus = 0.0, []
        for token, p in zip(order, probs):
            if mass >= params.top_p:
                break
            nucleus.append(token)
            mass += p
        order = nucleus
    return set(order)


@settings(max_examples=80, deadline=None)
@given(data=st.data(), num_rows=st.integers(1, 5))
def test_filter_keeps_exactly_the_defined_tokens_in_mixed_batches(data, num_rows):
    vocab = 40
    # Distinct scores (a permutation), so the definition has no ties to break.
    logits = torch.stack([torch.randperm(vocab, generator=torch.Generator().manual_seed(
        data.draw(st.integers(0, 2**31)))).float() * data.draw(st.floats(0.05, 0.5))
        for _ in range(num_rows)])
    params = [SamplingParams(top_k=data.draw(st.sampled_from([0, 1, 3, 17, 40, 60])),
                             top_p=data.draw(st.sampled_from([1.0, 0.999, 0.9, 0.5, 0.05])),
                             temperature=data.draw(st.floats(0.3, 2.0))) for _ in range(num_rows)]
    scores = filter_logits(logits, rows(*params))
    for row, p in enumerate(params):
        kept = set(torch.isfinite(scores[row]).nonzero().flatten().tolist())
        assert kept == _kept_literally(logits[row], p), p


def test_rows_without_top_p_keep_even_their_least_likely_tokens():
    logits = torch.tensor([[30.0, 0.0, -30.0, -60.0]] * 2)
    scores = filter_logits(logits, rows(SamplingParams(top_p=0.5), SamplingParams(top_p=1.0)))
    assert torch.isfinite(scores).sum(dim=-1).tolist() == [1, 4]


def test_logprobs_are_raw_log_softmax_with_top_n():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
    out = Sampler()(logits, rows(SamplingParams(temperature=0, logprobs=2),
                                 SamplingParams(temperature=0)))
    expected = torch.log_softmax(logits, -1)
    assert torch.allclose(out.logprobs, expected[[0, 1], [1, 2]])
    assert out.top_ids[0].tolist() == [1, 2]
    assert torch.allclose(out.top_logprobs[0], expected[0, [1, 2]])


@pytest.mark.parametrize("field, kwargs", [
    ("temperature", {"temperature": -0.1}),
    ("temperature", {"temperature": float("nan")}),
    ("top_p", {"top_p": 0.0}),
    ("top_p", {"top_p": 1.5}),
    ("top_k", {"top_k": -2}),
    ("max_tokens", {"max_tokens": 0}),
    ("seed", {"seed": -1}),
    ("stop", {"stop": ("",)}),
    ("logprobs", {"logprobs": 21}),
])
def test_bad_sampling_params_name_the_field(field, kwargs):
    with pytest.raises(InvalidRequestError) as err:
        SamplingParams(**kwargs)
    assert err.value.field == field and field in str(err.value)


def test_sampling_params_normalise_sequences():
    params = SamplingParams(stop=["x"], stop_token_ids=[3])
    assert params.stop == ("x",) and params.stop_token_ids == (3,)
    assert SamplingParams(top_k=-1).top_k_enabled is False


def test_counter_uniform_is_uniform_and_independent_across_keys():
    keys = torch.tensor([row_seed(s, i) for s in range(4) for i in range(25)])
    u = counter_uniform(keys, 2000)
    assert u.shape == (100, 2000) and u.dtype == torch.float32
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005
    counts = torch.histc(u, bins=10, min=0, max=1)
    expected = u.numel() / 10
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 30                      # 9 degrees of freedom: p < 0.001 beyond ~27.9
    correlation = torch.corrcoef(u[:10])   # distinct keys: rows uncorrelated
    assert (correlation - torch.eye(10)).abs().max() < 0.1
    assert torch.equal(counter_uniform(keys[:3], 2000), u[:3])
