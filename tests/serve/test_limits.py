"""Request size limits: the prompt-length bound is sound, huge bodies are refused before they are read, and a long
prompt is tokenized off the event loop (a real `turnout serve` with a 256K-token context, so a 2.6M-character
prompt is worth tokenizing)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time

import httpx
import pytest
import torch

from turnout.data import Tokenizer
from turnout.model import ModelArgs, Transformer, save_pretrained
from turnout.serve import limits
from turnout.serve.server import error_response

from .conftest import ServerProcess, cli_command

CONTEXT = 2**18
NAME = "debug-long"


@pytest.fixture(scope="module")
def tok(random_hf):
    return Tokenizer.load(random_hf)


def test_no_text_longer_than_the_bound_fits(tok):
    longest = limits.longest_token_bytes(tok)
    vocab = json.loads(tok.to_str())["model"]["vocab"]
    assert longest == max(len(t) for t in vocab if not t.startswith("<|"))
    for text in ("To be, or not to be: that is the question.\n" * 50, "   " * 300, "é🌞x" * 200,
                 max(vocab, key=len) * 100, "<|eos|>" * 40):
        assert len(tok.encode(text)) * longest >= len(text.encode()) >= len(text)  # tokens >= chars / longest
    assert limits.prompt_char_limit(tok, 512) == 511 * longest
    limits.check_prompt_text("x" * (511 * longest), 511 * longest, 512)
    with pytest.raises(limits.RequestError, match="no text longer than") as e:
        limits.check_prompt_text("x" * (511 * longest + 1), 511 * longest, 512)
    assert e.value.code == "context_length_exceeded" and e.value.param == "prompt"
    assert limits.default_body_bytes(511 * longest, 512) == limits.MIN_BODY_BYTES
    assert limits.default_body_bytes(10**6, 8192) > 16 * 6 * 10**6


@pytest.fixture(scope="module")
def server(random_hf, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve-long") / NAME
    torch.manual_seed(0)
    save_pretrained(Transformer(ModelArgs.preset("debug", max_seq_len=CONTEXT)), path)
    shutil.copy(random_hf / "tokenizer.json", path / "tokenizer.json")
    s = ServerProcess("--model", str(path), "--target", "cpu", "--max-context", str(CONTEXT), "--max-batch", "1")
    yield s
    s.close()


def _raw(port: int, head: bytes, body: bytes = b"") -> tuple[float, bytes]:
    """Send `head` (and `body`) on a socket and read one response: (seconds, response bytes)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head + body)
        data = b""
        while not (b"\r\n\r\n" in data and data.rstrip().endswith(b"}")):
            more = s.recv(65536)
            if not more:
                break
            data += more
    return time.monotonic() - t0, data


def test_a_huge_body_is_refused_before_it_is_read(server):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000000\r\n\r\n")  # 10 GB announced, none sent
    took, resp = _raw(server.port, head)
    status, _, rest = resp.partition(b"\r\n")
    err = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert status.startswith(b"HTTP/1.1 413") and took < 2, (took, resp[:300])
    assert err["code"] == "request_too_large" and "\n" not in err["message"] and "10000000000 bytes" in err["message"]
    print(f"10 GB Content-Length refused in {took * 1000:.1f} ms")


def test_a_chunked_body_is_refused_once_it_outgrows_the_limit():
    """No length told: BodyLimit reads no further than the limit, and passes a body under it on unchanged."""
    reads, sent = [], []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 1000, "more_body": len(reads) < 10}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):  # what the server behind the limit would read
        got = []
        while not got or got[-1]["more_body"]:
            got.append(await receive())
        sent.append(b"".join(m["body"] for m in got))

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [(b"host", b"x")]}
    asyncio.run(limits.BodyLimit(app, 4500, lambda m: error_response(413, m, code="request_too_large"))(
        scope, receive, send))
    assert len(reads) == 5 and sent[0]["status"] == 413 and b"limit of 4500 bytes" in sent[1]["body"]
    reads.clear(), sent.clear()
    asyncio.run(limits.BodyLimit(app, 10_000, lambda m: error_response(413, m))(scope, receive, send))
    assert sent == [b"x" * 10_000]


def test_a_prompt_too_long_to_fit_is_refused_without_tokenizing(server):
    t0 = time.monotonic()
    r = httpx.post(server.base + "/v1/completions", json={"model": NAME, "prompt": "word " * 1_000_000},
                   timeout=120)  # 5M characters; tokenizing them takes seconds
    took = time.monotonic() - t0
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and "characters" in err["message"]
    assert took < 2, f"refused after {took:.1f} s"
    print(f"5M-character prompt refused in {took * 1000:.0f} ms")


def test_health_answers_while_a_long_prompt_is_tokenized(server, tok):
    # just under the bound (2.6M characters), so it is tokenized, for about 2 s; then refused (2.6M tokens)
    prompt = "x" * (limits.prompt_char_limit(tok, CONTEXT) - 1000)
    done: dict = {}

    def big():
        r = httpx.post(server.base + "/v1/completions", json={"model": NAME, "prompt": prompt, "max_tokens": 1},
                       timeout=120)
        done.update(status=r.status_code, err=r.json()["error"], at=time.monotonic())

    t = threading.Thread(target=big)
    t.start()
    time.sleep(0.3)  # the body is on its way and tokenizing has begun
    waits = []
    for _ in range(5):
        t0 = time.monotonic()
        assert httpx.get(server.base + "/health", timeout=30).json()["status"] == "ok"
        waits.append(time.monotonic() - t0)
    pinged = time.monotonic()
    t.join(120)
    assert done["status"] == 400 and "tokens" in done["err"]["message"], done
    assert max(waits) < 0.5, f"/health took {max(waits):.2f} s while a prompt was tokenized"
    assert done["at"] > pinged, "tokenizing ended before the pings did: this test needs a longer prompt"
    print(f"/health during a {len(prompt)}-character tokenization: at most {max(waits) * 1000:.0f} ms; "
          f"the prompt's 400 came {done['at'] - pinged:.2f} s after the last ping")


def test_the_body_limit_is_set_from_the_command_line(random_hf):
    s = ServerProcess("--model", str(random_hf), "--target", "cpu", "--max-body-bytes", "2048")
    try:
        body = {"model": "x", "prompt": "to be " * 600, "max_tokens": 1}  # ~3.6 KB: past 2048, far below the default
        r = httpx.post(s.base + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    finally:
        s.close()
    r = subprocess.run(cli_command("serve", "--model", str(random_hf), "--max-body-bytes", "10"), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "--max-body-bytes" in r.stderr and len(r.stderr.strip().splitlines()) == 1
