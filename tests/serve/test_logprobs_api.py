"""Logprobs, echo, n and unknown fields through a real `turnout serve`, parsed by the openai client; the values are
checked against a direct forward of the same weights (log_softmax of its logits at each position, float32)."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch

from turnout.serve import Engine, SamplingParams, load_for_serving
from turnout.serve.chat import CHAT_STOP, render_chat
from turnout.serve.logprobs import TokenText

from .conftest import ServerProcess

NAME = "debug-random"
ATOL = 1e-4  # float32: the server's cached decode path and a full forward round differently
PROMPT = "ROMEO: But, soft! what light"


@pytest.fixture(scope="module")
def server(random_hf):
    s = ServerProcess("--model", str(random_hf), "--target", "cpu", "--max-context", "128", "--max-batch", "4")
    yield s
    s.close()


@pytest.fixture(scope="module")
def lm(random_hf):
    return load_for_serving(random_hf, "cpu")


@pytest.fixture(scope="module")
def reference(lm):
    """One request at a time in this process, on the same weights: its token ids."""
    engine = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=1, max_context=128)
    return lambda prompt, **kw: engine.generate(prompt, SamplingParams(**kw))


@pytest.fixture(scope="module")
def forward(lm):
    @torch.no_grad()
    def run(ids: list[int]) -> torch.Tensor:
        """[T, V]: row t is the distribution of ids[t + 1]."""
        return torch.log_softmax(lm.model(torch.tensor([ids]))[0].float(), -1)
    return run


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="none", max_retries=0, timeout=60)


def _check_legacy(lp, ids: list[int], first: int, ref: torch.Tensor, tt: TokenText, top: int) -> None:
    """lp (openai's Logprobs) scores ids, whose first sits at position `first` of the sequence ref was run on."""
    assert lp.tokens == [tt.text(i) for i in ids]
    for k, (i, v, alts) in enumerate(zip(ids, lp.token_logprobs, lp.top_logprobs)):
        pos = first + k
        if pos == 0:
            assert v is None and alts is None  # nothing precedes the first prompt token
            continue
        row = ref[pos - 1]
        assert abs(v - row[i].item()) < ATOL
        best = row.topk(top).values.tolist()
        assert top <= len(alts) <= top + 1 and alts[tt.text(i)] == v  # the N likeliest, and the chosen one
        assert sorted(alts.values(), reverse=True)[:top] == pytest.approx(best, abs=ATOL)


def _starts(tt: TokenText, ids: list[int], start: int = 0) -> list[int]:
    """Where each token starts in the text: the characters wholly before its bytes."""
    return [start + len(b"".join(tt.bytes(i) for i in ids[:k]).decode(errors="ignore")) for k in range(len(ids))]


def _check_offsets(text: str, lp, tt: TokenText, ids: list[int]) -> None:
    """Every token made of whole characters is found in the text at its offset (the model's random text also
    has bytes that are no character, shown as U+FFFD), and the offsets are where the text of the tokens before
    each ends when that text ends on a whole character."""
    whole = 0
    for k, (i, off) in enumerate(zip(ids, lp.text_offset)):
        t, before = tt.text(i), b"".join(tt.bytes(j) for j in ids[:k])
        if not t.startswith("bytes:"):
            assert text[off:off + len(t)] == t, (off, t, text)
            whole += 1
        try:
            assert off == len(before.decode())
        except UnicodeDecodeError:
            pass
    assert whole > len(ids) // 2


def test_completion_logprobs_match_a_direct_forward(client, lm, reference, forward):
    tt = TokenText(lm.tokenizer)
    prompt_ids = lm.tokenizer.encode(PROMPT)
    for kw in (dict(temperature=0.0), dict(temperature=1.5, seed=11), dict(temperature=0.7, top_k=5, seed=2)):
        ref = reference(PROMPT, max_tokens=10, ignore_eos=True, **kw)
        extra = {"ignore_eos": True} | ({"top_k": kw["top_k"]} if "top_k" in kw else {})
        r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=10, logprobs=5, extra_body=extra,
                                      **{k: v for k, v in kw.items() if k != "top_k"})
        c = r.choices[0]
        assert c.text == ref.text and (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(prompt_ids), 10)
        assert r.usage.total_tokens == len(prompt_ids) + 10
        # raw distribution: the values do not depend on the temperature or top-k the tokens were drawn with
        full = forward(prompt_ids + ref.token_ids)
        _check_legacy(c.logprobs, ref.token_ids, len(prompt_ids), full, tt, 5)
        _check_offsets(c.text, c.logprobs, tt, ref.token_ids)


def test_echo_and_max_tokens_zero_score_the_prompt(client, lm, forward, reference):
    """What lm-eval's loglikelihood requests send: echo, max_tokens 0, logprobs; several prompts at once."""
    tt = TokenText(lm.tokenizer)
    prompts = [PROMPT, "JULIET: O Romeo, Romeo!"]
    r = client.completions.create(model=NAME, prompt=prompts, max_tokens=0, echo=True, logprobs=1, temperature=0)
    ids = [lm.tokenizer.encode(p) for p in prompts]
    assert [c.text for c in r.choices] == prompts and [c.finish_reason for c in r.choices] == ["length"] * 2
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (sum(map(len, ids)), 0)
    for c, p, i in zip(r.choices, prompts, ids):
        _check_legacy(c.logprobs, i, 0, forward(i), tt, 1)
        assert c.logprobs.text_offset == _starts(tt, i)
        assert c.logprobs.token_logprobs[0] is None
        # a continuation's loglikelihood, as a harness computes it
        assert sum(c.logprobs.token_logprobs[1:]) == pytest.approx(
            sum(forward(i)[k - 1, i[k]].item() for k in range(1, len(i))), abs=1e-3)
    # echo with new tokens: the prompt's tokens, then the generated ones from the end of the echoed text
    ref = reference(PROMPT, max_tokens=5, temperature=0.0, ignore_eos=True)
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=5, echo=True, logprobs=2, temperature=0,
                                  extra_body={"ignore_eos": True})
    c = r.choices[0]
    assert c.text == PROMPT + ref.text
    _check_legacy(c.logprobs, ids[0] + ref.token_ids, 0, forward(ids[0] + ref.token_ids), tt, 2)
    assert c.logprobs.text_offset[len(ids[0])] == len(PROMPT)
    # echo without logprobs: text only
    r = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=0, echo=True)
    assert r.choices[0].text == PROMPT and r.choices[0].logprobs is None and r.usage.completion_tokens == 0


def test_tokens_as_token_ids_name_every_token_exactly(client, lm):
    """vLLM's return_tokens_as_token_ids: "token_id:N" for every token, chosen and alternatives, on both routes;
    values and offsets as without it."""
    ids = lm.tokenizer.encode(PROMPT)
    kw = dict(model=NAME, prompt=PROMPT, max_tokens=4, echo=True, logprobs=3, temperature=0)
    plain = client.completions.create(**kw).choices[0].logprobs
    named = client.completions.create(**kw, extra_body={"return_tokens_as_token_ids": True}).choices[0].logprobs
    assert named.tokens[:len(ids)] == [f"token_id:{i}" for i in ids]
    assert all(t.startswith("token_id:") for d in named.top_logprobs[1:] for t in d)
    assert named.token_logprobs == plain.token_logprobs and named.text_offset == plain.text_offset
    assert [sorted(d.values()) for d in named.top_logprobs[1:]] == [sorted(d.values()) for d in plain.top_logprobs[1:]]
    r = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Who?"}], max_tokens=3,
                                       temperature=0, logprobs=True, top_logprobs=2,
                                       extra_body={"return_tokens_as_token_ids": True})
    assert all(e.token.startswith("token_id:") and all(t.token.startswith("token_id:") for t in e.top_logprobs)
               for e in r.choices[0].logprobs.content)


def test_chat_logprobs_and_top_logprobs(client, lm, reference, forward):
    tt = TokenText(lm.tokenizer)
    messages = [{"role": "user", "content": "Who goes there?"}]
    prompt = render_chat([("user", "Who goes there?")])
    ref = reference(prompt, max_tokens=8, temperature=0.0, stop=(CHAT_STOP,))
    full = forward(lm.tokenizer.encode(prompt) + ref.token_ids)
    P = len(lm.tokenizer.encode(prompt))
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0, logprobs=True,
                                       top_logprobs=3)
    c = r.choices[0]
    assert c.message.content == ref.text and r.usage.completion_tokens == ref.completion_tokens
    assert [e.token for e in c.logprobs.content] == [tt.text(i) for i in ref.token_ids]
    for k, (e, i) in enumerate(zip(c.logprobs.content, ref.token_ids)):
        row = full[P + k - 1]
        assert abs(e.logprob - row[i].item()) < ATOL and bytes(e.bytes) == tt.bytes(i)
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token  # greedy: the chosen is the top
        assert [t.logprob for t in e.top_logprobs] == pytest.approx(row.topk(3).values.tolist(), abs=ATOL)
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=3, logprobs=True, seed=1)
    assert all(e.top_logprobs == [] for e in r.choices[0].logprobs.content)
    assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=3)
    assert r.choices[0].logprobs is None


def test_n_samples_use_derived_seeds(client, reference, lm):
    kw = dict(max_tokens=8, temperature=1.0, seed=7)
    r = client.completions.create(model=NAME, prompt=["a", "b"], n=3, **kw)
    assert [c.index for c in r.choices] == list(range(6))
    want = [reference(p, max_tokens=8, temperature=1.0, seed=7 + i) for p in ("a", "b") for i in range(3)]
    assert [c.text for c in r.choices] == [w.text for w in want]
    assert len({c.text for c in r.choices[:3]}) > 1  # independent samples
    assert r.usage.prompt_tokens == len(lm.tokenizer.encode("a")) + len(lm.tokenizer.encode("b"))  # once each
    assert r.usage.completion_tokens == sum(w.completion_tokens for w in want)
    one = client.completions.create(model=NAME, prompt="a", **kw)
    assert one.choices[0].text == r.choices[0].text  # sample 0 is what n = 1 gives
    messages = [{"role": "user", "content": "Speak."}]
    chat = client.chat.completions.create(model=NAME, messages=messages, n=2, **kw)
    prompt = render_chat([("user", "Speak.")])
    assert [c.message.content for c in chat.choices] == [
        reference(prompt, max_tokens=8, temperature=1.0, seed=7 + i, stop=(CHAT_STOP,)).text for i in range(2)]


def test_best_of_returns_the_likeliest_samples(client, reference, lm):
    """best_of draws best_of samples per prompt (derived seeds, as n does) and returns the n whose tokens' summed
    logprob is highest, best first; usage counts every sample drawn."""
    kw = dict(max_tokens=8, temperature=1.0, seed=11)
    for logprobs in (None, 1):  # ranked by logprobs whether or not the reply carries them
        r = client.completions.create(model=NAME, prompt=["a", "b"], n=2, best_of=4, logprobs=logprobs, **kw)
        assert [c.index for c in r.choices] == list(range(4))
        total = 0
        for k, p in enumerate(("a", "b")):
            drawn = [reference(p, max_tokens=8, temperature=1.0, seed=11 + i, logprobs=0) for i in range(4)]
            score = [sum(t.logprob for t in d.logprobs) for d in drawn]
            best = sorted(range(4), key=lambda i: score[i], reverse=True)[:2]
            assert [c.text for c in r.choices[2 * k:2 * k + 2]] == [drawn[i].text for i in best]
            total += sum(d.completion_tokens for d in drawn)
        assert (r.choices[0].logprobs is None) is (logprobs is None)
        assert r.usage.completion_tokens == total  # all eight samples, the dropped ones too
    for body, why in (({"n": 3, "best_of": 2}, "at least n"), ({"best_of": 2, "stream": True}, "cannot be streamed")):
        with pytest.raises(openai.BadRequestError, match=why):
            client.completions.create(model=NAME, prompt="a", max_tokens=2, **body)


def test_streaming_carries_logprobs_per_chunk(client):
    body = dict(model=NAME, prompt=[PROMPT, "x"], max_tokens=6, echo=True, logprobs=2, temperature=0, n=2)
    whole = client.completions.create(**body)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **body))
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump() and chunks[-1].choices == []
    for c in whole.choices:
        mine = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].index == c.index]
        assert "".join(m.text for m in mine) == c.text and mine[-1].finish_reason == c.finish_reason
        for field in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            assert [x for m in mine for x in getattr(m.logprobs, field)] == getattr(c.logprobs, field), field
    messages = [{"role": "user", "content": "Who goes there?"}]
    kw = dict(model=NAME, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    got = [e for ch in chunks for e in (ch.choices[0].logprobs.content if ch.choices[0].logprobs else [])]
    assert [e.model_dump() for e in got] == [e.model_dump() for e in whole.choices[0].logprobs.content]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == whole.choices[0].message.content


def test_unknown_and_unsupported_fields_are_refused(server, client):
    def post(body, path="/v1/completions"):
        r = httpx.post(server.base + path, json={"model": NAME} | body, timeout=30)
        return r.status_code, r.json()

    for path, body, param in [
        ("/v1/completions", {"prompt": "x", "prompt_logprobs": 1}, "prompt_logprobs"),  # vLLM's name
        ("/v1/completions", {"prompt": "x", "logit_bias": {"5": 1}}, "logit_bias"),
        ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs"),
        ("/v1/completions", {"prompt": "x", "logprobs": True}, "logprobs"),
        ("/v1/completions", {"prompt": "x", "n": 5}, "n"),
        ("/v1/completions", {"prompt": "x", "best_of": 5}, "best_of"),
        ("/v1/completions", {"prompt": "x", "max_completion_tokens": 2}, "max_completion_tokens"),
        ("/v1/completions", {"prompt": "x", "stream": True, "stream_options": {"include_usage": True, "x": 1}},
         "stream_options"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "echo": True}, "echo"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
         "top_logprobs"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True,
                                  "top_logprobs": 21}, "top_logprobs"),
    ]:
        code, got = post(body, path)
        assert code == 400 and got["error"]["param"] == param, (body, got)
        assert "\n" not in got["error"]["message"] and param in got["error"]["message"]
    code, got = post({"prompt": "x", "prompt_logprobs": 1})
    assert "echo" in got["error"]["message"]  # says what to send instead
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.completions.create(model=NAME, prompt="x", logit_bias={"5": 1})
    # accepted: fields with a meaning here, and `user`, which has none on the output
    r = client.completions.create(model=NAME, prompt="x", max_tokens=2, user="someone", temperature=0)
    assert r.choices[0].text == client.completions.create(model=NAME, prompt="x", max_tokens=2,
                                                          temperature=0).choices[0].text
