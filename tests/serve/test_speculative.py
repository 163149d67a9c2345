"""Speculative decoding with the MTP drafter: the same tokens as plain decoding, and the acceptance rule's law."""

from __future__ import annotations

import copy

import pytest
import torch

from turnout.serve import Engine, SamplingParams, load_for_serving
from turnout.serve.sampling import filter_logits, verify_drafts

GREEDY = SamplingParams(max_tokens=21, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def lm(random_hf):
    lm = load_for_serving(random_hf, "cpu")
    assert lm.model.args.mtp_depth == 1
    return lm


def _prompts(lm, lengths):
    ids = lm.tokenizer.encode("JULIET: O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name.")
    return [ids[i:i + n] for i, n in enumerate(lengths)]


def _run(engine, prompts, params):
    handles = [engine.submit(p, params) for p in prompts]
    engine.run()
    return [h.result().token_ids for h in handles]


def _engines(model, tokenizer, backend, **kw):
    return (Engine(copy.deepcopy(model), tokenizer, backend, max_batch=4, max_context=64, **kw),
            Engine(copy.deepcopy(model), tokenizer, backend, max_batch=4, max_context=64, speculative=True, **kw))


def test_greedy_speculation_gives_the_plain_tokens(lm):
    """Random weights: the drafter is nearly always wrong, so this exercises the rejection path in a full batch."""
    plain, spec = _engines(lm.model, lm.tokenizer, lm.backend)
    prompts = _prompts(lm, [1, 4, 9, 2])
    assert _run(spec, prompts, GREEDY) == _run(plain, prompts, GREEDY)
    assert spec.stats.drafted > 0 and spec.stats.decode_tokens == plain.stats.decode_tokens == 4 * 20
    assert spec.acceptance_rate is not None and plain.acceptance_rate is None


def test_a_drafter_that_is_always_right_halves_the_steps(lm):
    """Zero final-norm weights make every logit 0 (greedy picks token 0) for the main model and the drafter alike:
    every draft is kept, each step emits two tokens, and the odd max_tokens still stops exactly."""
    model = copy.deepcopy(lm.model)
    with torch.no_grad():
        model.norm.weight.zero_()
        model.mtp[0].norm.weight.zero_()
    plain, spec = _engines(model, lm.tokenizer, lm.backend)
    prompts = _prompts(lm, [3, 6])
    out = _run(spec, prompts, GREEDY)
    assert out == _run(plain, prompts, GREEDY) == [[0] * 21, [0] * 21]
    assert spec.acceptance_rate == 1.0
    assert spec.stats.decode_steps == 10 and plain.stats.decode_steps == 20  # 20 decoded tokens per row


def test_sampled_requests_run_and_stop_at_their_limits(lm):
    _, spec = _engines(lm.model, lm.tokenizer, lm.backend)
    params = SamplingParams(max_tokens=15, temperature=0.9, top_k=50, top_p=0.95, seed=3, ignore_eos=True)
    outs = _run(spec, _prompts(lm, [5]) * 2, params)
    assert [len(o) for o in outs] == [15, 15] and outs[0] == outs[1]  # same seed, same prompt
    assert all(0 <= t < lm.model.args.vocab_size for o in outs for t in o)
    # the context limit: a prompt of 60 tokens in a 64-token context gets exactly 4 more
    long = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    (out,) = _run(spec, [list(range(5, 65))], long)
    assert len(out) == 4


def test_a_model_without_mtp_is_refused(lm):
    model = copy.deepcopy(lm.model)
    model.mtp = torch.nn.ModuleList()
    model.args = model.args.replace(mtp_depth=0)
    with pytest.raises(ValueError, match="MTP"):
        Engine(model, lm.tokenizer, lm.backend, speculative=True)


def test_greedy_verification_keeps_the_draft_only_when_it_is_the_argmax():
    logits = torch.full((3, 2, 5), -1.0)
    logits[0, 0, 2] = logits[0, 1, 4] = 1  # argmaxes 2 then 4
    logits[1, 0, 3] = logits[1, 1, 1] = 1
    logits[2, 0, 0] = logits[2, 1, 0] = 1
    params = [SamplingParams(temperature=0)] * 3
    assert verify_drafts(logits, [2, 1, 0], params, [None] * 3) == [[2, 4], [3], [0, 0]]


def test_sampled_verification_has_the_target_distribution():
    """Whatever the draft, the first emitted token follows the filtered target distribution, and after an accepted
    draft the second follows its own (chi-square-free check: 40k draws, 0.01 absolute tolerance)."""
    torch.manual_seed(0)
    logits = torch.randn(1, 2, 6) * 1.5
    params = SamplingParams(temperature=0.8, top_k=5)
    target0 = torch.softmax(filter_logits(logits[0, 0], params), -1)
    target1 = torch.softmax(filter_logits(logits[0, 1], params), -1)
    for draft in (int(target0.argmax()), int(target0.argmin())):  # a likely and an impossible (top-k cut) draft
        g = torch.Generator().manual_seed(draft)
        first, second = torch.zeros(6), torch.zeros(6)
        n = 40_000
        for _ in range(n):
            toks = verify_drafts(logits, [draft], [params], [g])[0]
            first[toks[0]] += 1
            if len(toks) == 2:
                second[toks[1]] += 1
        assert (first / n - target0).abs().max() < 0.01, (draft, first / n, target0)
        if second.sum():
            assert (second / second.sum() - target1).abs().max() < 0.02
        assert first[draft] / n == pytest.approx(float(target0[draft]), abs=0.01)


def test_a_row_with_non_finite_logits_fails_alone_when_speculating(lm):
    _, spec = _engines(lm.model, lm.tokenizer, lm.backend)
    _, ref_engine = _engines(lm.model, lm.tokenizer, lm.backend)
    prompts = _prompts(lm, [3, 6, 2])
    params = SamplingParams(max_tokens=12, temperature=0.8, seed=4, ignore_eos=True)
    ref = _run(ref_engine, prompts, params)
    victim = spec.submit("Hostile to be or not", SamplingParams(max_tokens=12, temperature=0.7, seed=1))
    handles = [spec.submit(p, params) for p in prompts]
    spec.run(max_steps=2)
    spec.cache.kv[:, 0] = float("nan")  # the victim was admitted first: cache row 0 (main and MTP layers)
    spec.run()
    assert [h.result().token_ids for h in handles] == ref
    assert list(victim.events())[-1].finish_reason == "error" and spec.stats.errors == 1
