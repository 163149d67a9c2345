"""A real `turnout serve` process on loopback: OpenAI client, streaming, 16 concurrent clients, fuzzed bad requests."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from turnout.serve import Engine, SamplingParams, load_for_serving
from turnout.serve.api_schema import MAX_N
from turnout.serve.logprobs import MAX_LOGPROBS
from turnout.serve.chat import CHAT_STOP, render_chat

from .conftest import ServerProcess

KEY = "test-key-123"
NAME = "debug-random"
CONTEXT = 512


@pytest.fixture(scope="module")
def server(random_hf):
    s = ServerProcess("--model", str(random_hf), "--target", "cpu", api_key=KEY)
    yield s
    s.close()


@pytest.fixture(scope="module")
def reference(random_hf):
    """One request at a time, in this process, on the same weights."""
    lm = load_for_serving(random_hf, "cpu")
    engine = Engine(lm.model, lm.tokenizer, lm.backend, max_batch=1)

    def run(prompt: str, **kw):
        return engine.generate(prompt, SamplingParams(**kw))
    return run


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_a_message_name_reaches_the_prompt(client, reference):
    """OpenAI's participant `name` is not ignored: it opens the content in turnout's chat format, and a model's own
    chat template reads it as the message's name."""
    from turnout.serve.chat import render_template

    assert render_chat([("user", "Hi!", "alice")]) == "<|user|>\nalice: Hi!\n<|assistant|>\n"
    tpl = "{% for m in messages %}[{{ m.role }}{% if m.name is defined %} {{ m.name }}{% endif %}]{{ m.content }}" \
          "{% endfor %}"
    assert render_template(tpl, [("user", "a", "bob"), ("assistant", "b", None)], None, None) == "[user bob]a[assistant]b"
    messages = [{"role": "user", "content": "Who goes there?", "name": "Bernardo"}]
    ref = reference(render_chat([("user", "Who goes there?", "Bernardo")]), max_tokens=8, temperature=0.0,
                    stop=(CHAT_STOP,))
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == ref.text
    assert r.usage.prompt_tokens == ref.prompt_tokens  # the name's tokens are in the prompt


def test_openai_client_completions_chat_and_streaming(client, reference):
    r = client.completions.create(model=NAME, prompt="ROMEO: what light", max_tokens=12, temperature=0)
    ref = reference("ROMEO: what light", max_tokens=12, temperature=0.0)
    assert r.choices[0].text == ref.text and r.choices[0].finish_reason == ref.finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (ref.prompt_tokens, ref.completion_tokens)

    chunks = list(client.completions.create(model=NAME, prompt="ROMEO: what light", max_tokens=12, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == ref.text
    assert chunks[-1].choices[0].finish_reason == ref.finish_reason

    messages = [{"role": "system", "content": "Speak verse."}, {"role": "user", "content": "Who goes there?"}]
    ref = reference(render_chat([(m["role"], m["content"]) for m in messages]), max_tokens=10, temperature=0.0,
                    stop=(CHAT_STOP,))
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0)
    assert r.choices[0].message.content == ref.text and r.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    assert chunks[-1].usage.completion_tokens == ref.completion_tokens

    seeded = dict(max_tokens=10, temperature=0.9, top_p=0.9, seed=5)
    r = client.completions.create(model=NAME, prompt=["a", "b"], **seeded)
    assert [c.text for c in r.choices] == [reference(p, **seeded).text for p in ("a", "b")]
    assert [m.id for m in client.models.list().data] == [NAME]


def test_sse_wire_format_and_stop_strings(server, reference):
    ref = reference("To be, or not", max_tokens=16, temperature=0.0)
    stop = ref.text[5:8]
    body = {"model": NAME, "prompt": "To be, or not", "max_tokens": 16, "temperature": 0, "stream": True,
            "stop": [stop]}
    with httpx.stream("POST", server.base + "/v1/completions", json=body, headers=server.headers, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: {") for e in events[:-2])
    assert "".join(c["choices"][0]["text"] for c in chunks) == ref.text[:ref.text.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_sixteen_concurrent_clients_get_one_at_a_time_answers(server, reference):
    jobs = []
    for i in range(16):
        prompt = f"{'Enter ' * (i % 5)}GHOST {i}: Remember me" + "!" * i
        kw = dict(max_tokens=8 + i % 7, temperature=0.0) if i % 2 else \
            dict(max_tokens=8 + i % 7, temperature=0.8, top_k=40, seed=1000 + i)
        jobs.append((prompt, kw, i % 4 == 1))  # some stream
    expected = [reference(p, **kw).text for p, kw, _ in jobs]

    def call(job):
        prompt, kw, stream = job
        c = openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0, timeout=120)
        extra = {"top_k": kw.pop("top_k")} if "top_k" in kw else {}
        if stream:
            return "".join(ch.choices[0].text for ch in c.completions.create(
                model=NAME, prompt=prompt, stream=True, extra_body=extra, **kw))
        return c.completions.create(model=NAME, prompt=prompt, extra_body=extra, **kw).choices[0].text

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(call, [(p, dict(kw), s) for p, kw, s in jobs]))
    assert got == expected
    health = httpx.get(server.base + "/health").json()
    assert health["status"] == "ok" and health["errors"] == 0 and health["running"] == 0


def test_models_health_openapi_and_auth(server):
    h = httpx.get(server.base + "/health").json()
    assert h["status"] == "ok" and h["cache_bytes_per_token"] == 480 and h["context"] == CONTEXT
    spec = httpx.get(server.base + "/openapi.json").json()
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert {"CompletionRequest", "CompletionResponse", "ChatRequest", "ChatResponse", "ErrorResponse"} <= set(schemas)
    refs = {r.rsplit("/", 1)[-1] for r in re.findall(r'"\$ref": "([^"]+)"', json.dumps(spec))}
    assert refs <= set(schemas) and "422" not in json.dumps(spec["paths"])
    for path, chunk in (("/v1/completions", "CompletionResponse"), ("/v1/chat/completions", "ChatCompletionChunk")):
        event = spec["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
        data = event["properties"]["data"]  # one event: data is [DONE] or a chunk's JSON text
        assert event["type"] == "object" and data["then"] == {"const": "[DONE]"}
        assert data["else"]["contentMediaType"] == "application/json"
        assert {"$ref": f"#/components/schemas/{chunk}"} in data["else"]["contentSchema"]["anyOf"]
    assert schemas["CompletionRequest"]["properties"]["model"]["examples"] == [NAME]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + KEY}):
        r = httpx.post(server.base + "/v1/completions", json={"model": NAME, "prompt": "x"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(server.base + "/v1/models", headers=server.headers)
    assert r.status_code == 200 and r.json()["data"][0]["id"] == NAME


def test_clear_errors(server):
    def post(body, path="/v1/completions"):
        r = httpx.post(server.base + path, json=body, headers=server.headers, timeout=30)
        return r.status_code, r.json()["error"]

    code, err = post({"model": NAME, "prompt": "word " * 600})
    assert code == 400 and err["param"] == "prompt" and "context is 512" in err["message"]
    code, err = post({"model": NAME, "prompt": "x", "max_tokens": 10**9})
    assert code == 400 and err["param"] == "max_tokens"
    code, err = post({"model": NAME, "prompt": "x", "max_tokens": -3})
    assert code == 400 and err["param"] == "max_tokens"
    code, err = post({"model": "gpt-4", "prompt": "x"})
    assert code == 404 and err["code"] == "model_not_found"
    code, err = post({"model": NAME, "messages": [{"role": "wizard", "content": "x"}]}, "/v1/chat/completions")
    assert code == 400 and err["param"] == "messages"
    r = httpx.post(server.base + "/v1/completions", content=b'{"model": ', headers=server.headers)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


def test_tiny_temperatures_decode_greedily(server, reference):
    """Temperatures down to the smallest float: logits / T used to overflow to inf and NaN (a 500)."""
    ref = reference("Hostile to be or not", max_tokens=10, temperature=0.0).text
    for t in (5e-324, 1e-300, 1.0195e-38):
        body = {"model": NAME, "prompt": "Hostile to be or not", "max_tokens": 10, "temperature": t, "seed": 1}
        r = httpx.post(server.base + "/v1/completions", json=body, headers=server.headers, timeout=30)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == ref, (t, r.text[:300])


def test_integral_numbers_are_integers_and_405_names_the_methods(server):
    def post(body):
        r = httpx.post(server.base + "/v1/completions", json={"model": NAME} | body, headers=server.headers,
                       timeout=30)
        return r.status_code, r.json()

    as_ints = post({"prompt": [12, 40], "max_tokens": 4, "seed": 2, "top_k": 5})
    assert as_ints[0] == 200
    as_floats = post({"prompt": [12.0, 40.0], "max_tokens": 4.0, "seed": 2.0, "top_k": 5.0})  # what JSON says
    assert as_floats[0] == 200 and as_floats[1]["choices"] == as_ints[1]["choices"]
    for bad in ({"seed": 2.5}, {"max_tokens": 4.5}, {"prompt": [12.5]}, {"seed": "2"}, {"top_k": True}):
        code, body = post({"prompt": "x", "max_tokens": 2} | bad)
        assert code == 400 and body["error"]["param"] == next(iter(bad)), (bad, body)
    for method, path, allow in (("TRACE", "/health", "GET"), ("POST", "/health", "GET"),
                                ("GET", "/v1/completions", "POST"), ("DELETE", "/v1/models", "GET")):
        r = httpx.request(method, server.base + path, headers=server.headers)
        assert r.status_code == 405 and r.headers["allow"] == allow and r.json()["error"]["message"]


def test_a_client_that_leaves_mid_stream_frees_its_row(server):
    before = httpx.get(server.base + "/health").json()["cancelled"]
    body = {"model": NAME, "prompt": "long", "max_tokens": 500, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.base + "/v1/completions", json=body, headers=server.headers) as r:
        next(r.iter_lines())
    t0 = time.monotonic()
    while httpx.get(server.base + "/health").json()["running"] and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    h = httpx.get(server.base + "/health").json()
    assert h["running"] == 0 and h["cancelled"] == before + 1  # cancelled, not run to its 500 tokens


# ---- fuzz ----------------------------------------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                    | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                    max_leaves=8)
WRONG = {  # field -> values that must be refused
    "model": st.sampled_from([None, 1, [], "no-such-model", ""]),
    "prompt": st.one_of(st.just(None), st.just(1.5), st.just([[1], [-5]]), st.just([-1]), st.just([10**6]),
                        st.just(["a", 1]), st.just("word " * 700), st.just({"text": "x"})),
    # 0 scores the prompt on /v1/completions (and is refused on chat); 8.0 is 8
    "max_tokens": st.one_of(st.integers(max_value=-1), st.integers(min_value=CONTEXT), st.just("16"), st.just(True),
                            st.floats().filter(lambda x: not (x.is_integer() and 0 <= x < CONTEXT))),
    "temperature": st.one_of(st.floats(min_value=2.0001), st.floats(max_value=-0.0001), st.just("hot")),
    "top_p": st.one_of(st.floats(max_value=0), st.floats(min_value=1.0001), st.just([0.5])),
    "top_k": st.one_of(st.integers(max_value=-2), st.just(2.5)),
    "n": st.integers(min_value=MAX_N + 1, max_value=10**30) | st.integers(max_value=0),
    "stop": st.one_of(st.just(["a", "b", "c", "d", "e"]), st.just([""]), st.just(["x" * 200]), st.just(7)),
    "seed": st.one_of(st.just(1.5), st.just("7"), st.just(True), st.just([1])),
    "stream": st.sampled_from(["yes", 1, None, {}]),
    "logprobs": st.sampled_from([MAX_LOGPROBS + 1, -1, True, "3"]),
    "echo": st.sampled_from(["no", 0]),
    "presence_penalty": st.floats(min_value=0.1, max_value=2),
}


@st.composite
def bad_requests(draw):
    """(path, raw body bytes): a well-formed request with one field made invalid, or a broken body."""
    chat = draw(st.booleans())
    base = {"model": NAME, "max_tokens": 4}
    base |= {"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "hi"}
    kind = draw(st.sampled_from(["field", "field", "field", "missing", "json", "shape", "messages"]))
    if kind == "field":
        key = draw(st.sampled_from(sorted(WRONG)))
        if chat and key in ("prompt", "echo", "logprobs"):
            key = "messages" if key == "prompt" else "n"
        base[key] = draw(WRONG[key]) if key != "messages" else draw(st.sampled_from([[], "hi", [{"role": "user"}]]))
    elif kind == "missing":
        base.pop(draw(st.sampled_from(["model", "messages" if chat else "prompt"])))
    elif kind == "messages":
        chat = True
        base.pop("prompt", None)
        base["messages"] = draw(st.sampled_from([
            [], [{"role": "robot", "content": "x"}], [{"role": "user", "content": [{"type": "image_url"}]}],
            [{"role": "user", "content": None}], [{"content": "x"}], "x"]))
    raw = json.dumps(base).encode()
    if kind == "json":
        raw = draw(st.sampled_from([raw[:-1], raw + b"}", b"", b"null", b"[]", b'"x"', b"{'a': 1}",
                                    raw.replace(b":", b"=", 1), b"\xff\xfe"]))
    elif kind == "shape":
        raw = json.dumps(draw(st.lists(JSON, max_size=3) | st.integers() | st.text())).encode()
    return ("/v1/chat/completions" if chat else "/v1/completions"), raw


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(req=bad_requests())
def test_fuzzed_bad_requests_get_4xx_with_an_openai_error(server, req):
    path, raw = req
    r = httpx.post(server.base + path, content=raw, headers=server.headers | {"Content-Type": "application/json"},
                   timeout=30)
    assert 400 <= r.status_code < 500, (path, raw[:200], r.status_code, r.text[:300])
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(extra=st.dictionaries(st.sampled_from(["prompt", "temperature", "top_p", "top_k", "stop", "seed", "echo",
                                              "stream", "user", "n", "suffix", "best_of", "stream_options"]),
                             JSON, max_size=4))
def test_fuzzed_arbitrary_fields_never_5xx(server, extra):
    body = {"model": NAME, "prompt": "hi", "max_tokens": 3} | extra
    r = httpx.post(server.base + "/v1/completions", json=body, headers=server.headers, timeout=30)
    assert r.status_code < 500, (body, r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_still_healthy_after_the_fuzz(server, client):
    assert httpx.get(server.base + "/health").json()["status"] == "ok"
    assert client.completions.create(model=NAME, prompt="still here", max_tokens=3).choices[0].text is not None
    assert server.proc.poll() is None


def test_a_speculative_server_gives_the_same_answers(random_hf, reference):
    s = ServerProcess("--model", str(random_hf), "--target", "cpu", "--speculative", "--max-context", "256")
    try:
        h = httpx.get(s.base + "/health").json()
        assert h["speculative"] is True and h["acceptance_rate"] is None and h["context"] == 256
        for n in (1, 2, 11):
            r = httpx.post(s.base + "/v1/completions", json={"model": NAME, "prompt": "ROMEO: what light",
                                                             "max_tokens": n, "temperature": 0}, timeout=60)
            ref = reference("ROMEO: what light", max_tokens=n, temperature=0.0)
            assert r.status_code == 200 and r.json()["choices"][0]["text"] == ref.text
            assert r.json()["usage"]["completion_tokens"] == ref.completion_tokens
        h = httpx.get(s.base + "/health").json()
        assert h["acceptance_rate"] is not None and 0 <= h["acceptance_rate"] <= 1
    finally:
        s.close()
