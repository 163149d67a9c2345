"""The engine: cached decoding against full recomputation, continuous batching against one-at-a-time, stops, limits."""

from __future__ import annotations

import asyncio
import copy
import threading

import pytest
import torch

from turnout.backend import get_backend
from turnout.model import LatentCache
from turnout.serve import Engine, RequestError, SamplingParams, load_for_serving

GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def lm(random_hf):
    return load_for_serving(random_hf, "cpu")


def prompts(lm, lengths):
    """Deterministic token-id prompts of the given lengths (ids of real text, cut)."""
    ids = lm.tokenizer.encode("ROMEO: But, soft! what light through yonder window breaks? It is the east, and "
                              "Juliet is the sun. Arise, fair sun, and kill the envious moon, who is already sick "
                              "and pale with grief, that thou her maid art far more fair than she. " * 3)
    return [ids[i * 7: i * 7 + n] for i, n in enumerate(lengths)]


def test_cache_bytes_per_token_formula(lm):
    a = lm.model.args
    e = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=2, max_context=64)
    assert e.cache_bytes_per_token == (a.kv_lora_rank + a.qk_rope_head_dim) * a.n_layers * 4 == 480
    bf = copy.deepcopy(lm.model).to(torch.bfloat16)
    assert Engine(bf, lm.tokenizer, lm.backend, max_batch=1, max_context=8).cache_bytes_per_token == 240


def test_engine_applies_the_targets_decode_kernels(lm):
    model = copy.deepcopy(lm.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Engine(model, lm.tokenizer, lm.backend, max_batch=1, max_context=8)
    assert lm.backend.inference_kernels() == {"weight_layout": "in_out", "experts_impl": "loop"}
    assert model.args.weight_layout == "in_out" and model.args.experts_impl == "loop"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert get_backend("sim:healthy").inference_kernels() == lm.backend.inference_kernels()


@torch.no_grad()
def test_cached_greedy_equals_full_recompute(lm):
    model = lm.model
    engine = Engine(model, lm.tokenizer, lm.backend, max_batch=1, max_context=128)
    for prompt in prompts(lm, [1, 5, 23]):
        out = engine.generate(prompt, GREEDY).token_ids
        ref, logits_ref = [], []
        for _ in range(GREEDY.max_tokens):
            logits = model(torch.tensor([prompt + ref]))[0, -1]
            logits_ref.append(logits)
            ref.append(int(logits.argmax()))
        assert out == ref, f"prompt of {len(prompt)} tokens: cached {out} != recomputed {ref}"
        # the same calls the engine makes (prefill, then one token per step in cache row 2) give close logits
        cache = LatentCache(model.args, 4, 128)
        slot = torch.tensor([2])
        got = [model(torch.tensor([prompt]), cache=cache, start_pos=0, slots=slot)[0, -1]]
        for i, t in enumerate(ref[:-1]):
            got.append(model(torch.tensor([[t]]), cache=cache, start_pos=torch.tensor([len(prompt) + i]),
                             slots=slot)[0, -1])
        err = max(float((g - r).abs().max() / r.abs().max()) for g, r in zip(got, logits_ref))
        assert err < 1e-5, f"cached logits differ from recomputed ones by {err:.2e} (relative)"


def test_batched_equals_one_at_a_time_with_requests_joining_midway(lm):
    lengths = [3, 17, 40, 9, 25, 1, 12, 30]
    ps = prompts(lm, lengths)
    params = [SamplingParams(max_tokens=6 + 3 * i, temperature=0.0, ignore_eos=True) if i % 3 else
              SamplingParams(max_tokens=10 + i, temperature=0.9, top_k=50, top_p=0.9, seed=100 + i, ignore_eos=True)
              for i in range(len(ps))]
    alone = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=1, max_context=128)
    ref = [alone.generate(p, sp) for p, sp in zip(ps, params)]

    engine = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=4, max_context=128)  # fewer rows than requests
    handles = [engine.submit(p, sp) for p, sp in zip(ps[:2], params[:2])]
    assert engine.run(max_steps=3) == 3
    handles += [engine.submit(p, sp) for p, sp in zip(ps[2:5], params[2:5])]  # join mid-way; one must wait
    engine.run(max_steps=4)
    handles += [engine.submit(p, sp) for p, sp in zip(ps[5:], params[5:])]
    engine.run()
    assert engine.stats.decode_steps < sum(sp.max_tokens for sp in params)  # rows really shared decode steps
    for i, (h, r) in enumerate(zip(handles, ref)):
        got = h.result()
        assert got.token_ids == r.token_ids, f"request {i} ({lengths[i]}-token prompt) differs in the batch"
        assert (got.text, got.finish_reason, got.completion_tokens) == (r.text, r.finish_reason, r.completion_tokens)
    assert sorted(engine._free) == list(range(4))


def test_seeded_sampling_is_reproducible_and_seed_dependent(lm):
    engine = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=4, max_context=64)
    sp = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=7, ignore_eos=True)
    a, b = engine.generate("To be", sp), engine.generate("To be", sp)
    c = engine.generate("To be", SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, seed=8, ignore_eos=True))
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def test_stop_strings_end_the_request_and_are_trimmed(lm):
    engine = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=2, max_context=128)
    (prompt,) = prompts(lm, [8])
    full = engine.generate(prompt, GREEDY).text
    stop = next(full[i:i + 3] for i in range(4, len(full) - 3) if "\ufffd" not in full[i:i + 3])
    cut = full.index(stop)
    h = engine.submit(prompt, SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=("zzzq", stop)))
    events = list(h.events())
    streamed = "".join(e.text for e in events)
    assert streamed == full[:cut] and stop not in streamed
    assert events[-1].finish_reason == "stop" and events[-1].completion_tokens < 24


def test_eos_ends_a_request_unless_ignored(lm):
    model = copy.deepcopy(lm.model)
    with torch.no_grad():
        model.head.weight[lm.tokenizer.eos_id] = model.norm.weight * 10  # eos wins every argmax
    engine = Engine(model, lm.tokenizer, lm.backend, max_batch=1, max_context=32)
    c = engine.generate("hello", SamplingParams(max_tokens=5, temperature=0.0))
    assert (c.finish_reason, c.text, c.completion_tokens) == ("stop", "", 1)
    c = engine.generate("hello", SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True))
    assert (c.finish_reason, c.completion_tokens) == ("length", 5)


def test_context_and_parameter_limits(lm):
    engine = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=1, max_context=32)
    with pytest.raises(RequestError, match="context is 32") as e:
        engine.submit(list(range(10, 42)), GREEDY)
    assert e.value.param == "prompt" and e.value.code == "context_length_exceeded"
    with pytest.raises(RequestError, match="at most 12") as e:
        engine.submit(list(range(10, 30)), SamplingParams(max_tokens=13))
    assert e.value.param == "max_tokens"
    h = engine.submit(list(range(10, 30)), SamplingParams(max_tokens=13, temperature=0, ignore_eos=True),
                      fit_max_tokens=True)
    assert h.result().completion_tokens == 12
    for bad, param in [(dict(max_tokens=-1), "max_tokens"), (dict(temperature=-1.0), "temperature"),
                       (dict(top_p=0.0), "top_p"), (dict(top_k=-2), "top_k"), (dict(seed=2.5), "seed")]:
        with pytest.raises(RequestError) as e:
            engine.submit("x", SamplingParams(**bad))
        assert e.value.param == param
    with pytest.raises(RequestError, match="token ids"):
        engine.submit([5, 1024], GREEDY)
    assert engine.encode_prompt("") == [lm.tokenizer.eos_id]


def test_cancel_frees_the_cache_row(lm):
    engine = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=2, max_context=64)
    h = engine.submit("cancel me", SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    waiting = engine.submit("never admitted", GREEDY)
    engine.run(max_steps=2)
    h.cancel()
    waiting.cancel()
    engine.run()
    assert list(h.events())[-1].finish_reason == "cancelled"
    assert list(waiting.events())[-1].finish_reason == "cancelled"
    assert sorted(engine._free) == [0, 1] and engine.pending == 0


def test_a_failing_target_fails_its_requests_and_the_engine_goes_on(lm):
    model = copy.deepcopy(lm.model)
    real, calls = model.forward, {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("device lost")
        return real(*a, **kw)

    model.forward = flaky
    engine = Engine(model, lm.tokenizer, lm.backend, max_batch=2, max_context=64).start()
    try:
        h = engine.submit("one", GREEDY)
        evs = list(h.events(timeout=30))
        assert evs[-1].finish_reason == "error" and "device lost" in evs[-1].error
        assert engine.generate("two", GREEDY, timeout=30).completion_tokens == 24
        assert engine.threaded and engine.stats.errors == 1
    finally:
        engine.shutdown()


def test_model_thread_on_a_sim_target_serves_concurrent_threads(random_hf, lm):
    ref_engine = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=1, max_context=96)
    ps = prompts(lm, [4, 11, 19, 7, 2, 15])
    ref = [ref_engine.generate(p, GREEDY).token_ids for p in ps]
    sim = load_for_serving(random_hf, "sim:healthy")
    engine = Engine(sim.model, sim.tokenizer, sim.backend, max_batch=4, max_context=96).start()
    got = [None] * len(ps)

    def client(i):
        got[i] = engine.generate(ps[i], GREEDY, timeout=60).token_ids

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(ps))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    finally:
        engine.shutdown()
    assert got == ref
    assert sim.backend.profile.name == "healthy" and isinstance(sim.backend, type(get_backend("sim:healthy")))


def test_astream_from_an_event_loop(lm):
    engine = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=2, max_context=64).start()
    ref = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=1, max_context=64).generate("async", GREEDY)

    async def main():
        parts = [ev async for ev in engine.astream("async", GREEDY)]
        early = engine.astream("stop early", SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
        async for _ in early:
            break
        await early.aclose()  # leaving early cancels the request
        return parts

    try:
        parts = asyncio.run(main())
        for _ in range(100):
            if engine.pending == 0:
                break
            threading.Event().wait(0.05)
        assert engine.pending == 0
    finally:
        engine.shutdown()
    assert "".join(p.text for p in parts) == ref.text and parts[-1].finish_reason == "length"


def _alone(lm, jobs, model=None):
    """Each (prompt, params) decoded by itself: the answers batch neighbours must not change."""
    engine = Engine(model or lm.model, lm.tokenizer, lm.backend, max_batch=1, max_context=64)
    return [engine.generate(p, sp).token_ids for p, sp in jobs]


def _innocents(lm, n=6):
    ps = prompts(lm, [3 + 2 * i for i in range(n)])
    return [(p, SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True) if i % 2 else
             SamplingParams(max_tokens=10, temperature=0.8, top_p=0.9, seed=50 + i, ignore_eos=True))
            for i, p in enumerate(ps)]


@torch.no_grad()
def test_a_tiny_temperature_decodes_greedily_beside_untouched_neighbours(lm):
    """A temperature so small that logit / T overflows float32 (to inf, then NaN after softmax) only at a later
    decode step, not at prefill: the request still decodes (greedily, the T -> 0 limit), and so does its batch."""
    model = copy.deepcopy(lm.model)
    model.head.weight *= 100  # logits of ~80: the overflowing temperature stays a normal float32 (sampled path)
    prompt = lm.tokenizer.encode("Hostile to be or not")
    greedy = _alone(lm, [(prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))], model)[0]
    top = model(torch.tensor([prompt + greedy]))[0, len(prompt) - 1:-1].max(-1).values  # per generated position
    later = float(top[1:].max())
    assert later > float(top[0])
    T = (float(top[0]) + later) / 2 / float(torch.finfo(torch.float32).max)  # top[0] / T fits; `later` / T not
    assert T >= torch.finfo(torch.float32).tiny and float(top[0]) / T < 3.4e38 < later / T
    tiny = SamplingParams(max_tokens=12, temperature=T, seed=1, ignore_eos=True)
    jobs = _innocents(lm)
    ref = _alone(lm, jobs, model)
    engine = Engine(model, lm.tokenizer, lm.backend, max_batch=8, max_context=64)
    handles = [engine.submit(prompt, tiny)] + [engine.submit(p, sp) for p, sp in jobs]
    engine.run()
    results = [h.result() for h in handles]
    assert results[0].token_ids == greedy and results[0].finish_reason == "length"
    assert [r.token_ids for r in results[1:]] == ref
    assert engine.stats.errors == 0


def test_a_row_with_non_finite_logits_fails_alone(lm):
    """A request whose cache row turns to NaN mid-decode (as a faulty target would leave it) fails with a clear
    error; the others in its decode batch carry on and get the tokens they get alone."""
    jobs = _innocents(lm)
    ref = _alone(lm, jobs)
    engine = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=8, max_context=64)
    victim = engine.submit("Hostile to be or not", SamplingParams(max_tokens=20, temperature=0.7, seed=1))
    handles = [engine.submit(p, sp) for p, sp in jobs]
    engine.run(max_steps=2)
    engine.cache.kv[:, 0] = float("nan")  # the victim was admitted first: cache row 0
    engine.run()
    assert [h.result().token_ids for h in handles] == ref
    events = list(victim.events())
    assert events[-1].finish_reason == "error" and "non-finite logits" in events[-1].error
    assert engine.stats.errors == 1 and sorted(engine._free) == list(range(8))
