"""Log-probabilities from the engine against a direct forward of the model: log_softmax of its logits at each
position, in float32, for generated tokens (batched, sampled, speculative) and for prompts (max_tokens 0)."""

from __future__ import annotations

import copy

import pytest
import torch

from turnout.serve import Engine, SamplingParams, load_for_serving
from turnout.serve.logprobs import TextOffsets, TokenLogprob, TokenText, chat_shape, completion_shape

ATOL = 1e-4  # float32: the cached decode path and a full forward round differently


@pytest.fixture(scope="module")
def lm(random_hf):
    return load_for_serving(random_hf, "cpu")


def _ids(lm, n, start=0):
    ids = lm.tokenizer.encode("JULIET: O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy "
                              "name; or, if thou wilt not, be but sworn my love, and I'll no longer be a Capulet.")
    return ids[start:start + n]


@torch.no_grad()
def _reference(model, seq: list[int]) -> torch.Tensor:
    """log_softmax of a full forward's logits [T, V]: row t is the distribution of seq[t + 1]."""
    return torch.log_softmax(model(torch.tensor([seq]))[0].float(), -1)


def _check(ref: torch.Tensor, entries, tokens: list[int], first: int, top: int) -> None:
    """entries[i] scores tokens[i] from ref row first + i - 1 (its top `top` too)."""
    assert [e.token for e in entries] == tokens
    for i, e in enumerate(entries):
        row = ref[first + i - 1]
        assert abs(e.logprob - row[tokens[i]].item()) < ATOL, (i, e.logprob, row[tokens[i]].item())
        vals, ids = row.topk(top)
        assert len(e.top) == top
        assert all(abs(v - rv) < ATOL for (_, v), rv in zip(e.top, vals.tolist()))
        assert [i for i, _ in e.top][:1] == ids.tolist()[:1]  # the likeliest agrees (later ones may tie)
        assert [v for _, v in e.top] == sorted((v for _, v in e.top), reverse=True)


def test_generated_and_prompt_logprobs_match_a_direct_forward(lm):
    engine = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=4, max_context=128)
    jobs = [(_ids(lm, n, s), SamplingParams(max_tokens=m, temperature=t, seed=3, logprobs=k, prompt_logprobs=k,
                                            ignore_eos=True))
            for n, s, m, t, k in [(9, 0, 12, 0.0, 5), (3, 4, 7, 1.3, 0), (17, 2, 10, 0.8, 20), (1, 6, 5, 0.0, 2)]]
    handles = [engine.submit(p, sp) for p, sp in jobs]  # decoded together: one batched log_softmax per step
    engine.run()
    for (prompt, sp), h in zip(jobs, handles):
        out = h.result()
        ref = _reference(lm.model, prompt + out.token_ids)
        assert len(out.logprobs) == out.completion_tokens == sp.max_tokens
        _check(ref, out.logprobs, out.token_ids, len(prompt), sp.logprobs)
        assert out.prompt_logprobs[0].logprob is None and out.prompt_logprobs[0].top is None
        _check(ref, out.prompt_logprobs[1:], prompt[1:], 1, sp.logprobs)
        # the raw distribution: what temperature 1.3 or 0.8 does to the draw does not show in the values
        if sp.temperature == 0:
            assert all(e.token == e.top[0][0] for e in out.logprobs if e.top)


def test_max_tokens_zero_scores_the_prompt_only(lm):
    engine = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=2, max_context=64)
    prompt = _ids(lm, 20)
    out = engine.generate(prompt, SamplingParams(max_tokens=0, prompt_logprobs=3))
    assert (out.text, out.token_ids, out.finish_reason, out.completion_tokens) == ("", [], "length", 0)
    assert out.prompt_tokens == len(prompt) == len(out.prompt_logprobs)
    _check(_reference(lm.model, prompt), out.prompt_logprobs[1:], prompt[1:], 1, 3)
    plain = engine.generate(prompt, SamplingParams(max_tokens=4, temperature=0))
    assert plain.logprobs == [] and plain.prompt_logprobs == []  # nothing asked, nothing computed


def test_speculative_decoding_gives_the_same_logprobs(lm):
    assert lm.model.args.mtp_depth == 1
    sp = SamplingParams(max_tokens=9, temperature=0, logprobs=4, prompt_logprobs=4, ignore_eos=True)
    prompts = [_ids(lm, n, s) for n, s in [(5, 0), (11, 3)]]
    outs = []
    for spec in (False, True):
        e = Engine(copy.deepcopy(lm.model), lm.tokenizer, lm.backend, max_batch=2, max_context=64, speculative=spec)
        hs = [e.submit(p, sp) for p in prompts]
        e.run()
        outs.append([h.result() for h in hs])
    for plain, spec in zip(*outs):
        assert spec.token_ids == plain.token_ids
        for a, b in zip(plain.logprobs + plain.prompt_logprobs[1:], spec.logprobs + spec.prompt_logprobs[1:]):
            assert a.token == b.token and abs(a.logprob - b.logprob) < ATOL


def test_token_text_bytes_offsets_and_shapes(lm):
    tt = TokenText(lm.tokenizer)
    text = "naïve café → ok"
    ids = lm.tokenizer.encode(text)
    assert b"".join(tt.bytes(i) for i in ids) == text.encode()
    split = [i for i in ids if not _utf8(tt.bytes(i))]
    assert all(tt.text(i).startswith("bytes:\\x") for i in split)  # a token cut inside a character
    assert split, ids  # the tokenizer cuts some character of this text (else the offsets below prove less)
    entries = [TokenLogprob(ids[0], None, None)] + [TokenLogprob(i, -1.0, ((i, -1.0), (ids[0], -2.0))) for i in ids[1:]]
    offsets = TextOffsets(0)
    shape = completion_shape(entries, tt, offsets)
    assert offsets.at == len(text) and shape["token_logprobs"][0] is None and shape["top_logprobs"][0] is None
    # each token starts after the characters wholly before its bytes (one cut inside a character starts at it)
    starts = [len(b"".join(tt.bytes(i) for i in ids[:k]).decode(errors="ignore")) for k in range(len(ids))]
    assert shape["text_offset"] == starts
    assert shape["tokens"] == [tt.text(i) for i in ids] and shape["top_logprobs"][1][tt.text(ids[1])] == -1.0
    assert tt.text(lm.tokenizer.eos_id) == "<|eos|>"
    (c,) = chat_shape(entries[1:2], tt)
    assert set(c) == {"token", "logprob", "bytes", "top_logprobs"} and bytes(c["bytes"]) == tt.bytes(ids[1])
    assert [t["token"] for t in c["top_logprobs"]] == [tt.text(ids[1]), tt.text(ids[0])]


def _utf8(b: bytes) -> bool:
    try:
        b.decode()
        return True
    except UnicodeDecodeError:
        return False

