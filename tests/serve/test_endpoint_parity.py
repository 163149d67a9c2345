"""`turnout parity --b openai:URL`: a model against an OpenAI-compatible server (here `turnout serve` in its own
process): the same target passes, bf16-rounded matmuls fail, another model fails its tokenizer check, and a server
that is down or gives no logprobs is one line and exit 2."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import torch

from turnout.serve.endpoint import Scored
from turnout.serve.endpoint_parity import compare_topk

from .conftest import ServerProcess, cli, free_port

SMALL = ["--sequences", "2", "--seq-len", "64", "--prompts", "2", "--new-tokens", "8"]


@pytest.fixture(scope="module")
def cpu_server(trained_run):
    s = ServerProcess("--model", str(trained_run), "--target", "cpu")
    yield s
    s.close()


def parity(run, endpoint: str, out, *extra: str) -> tuple[int, dict]:
    code = cli(["parity", "--model", str(run), "--a", "cpu", "--b", f"openai:{endpoint}", "--out", str(out),
                *SMALL, *extra])
    return code, json.loads(out.read_text())


def test_an_endpoint_serving_the_same_weights_on_cpu_passes(trained_run, cpu_server, tmp_path, capsys):
    code, cert = parity(trained_run, cpu_server.base, tmp_path / "c.json")
    out = capsys.readouterr().out
    assert code == 0 and cert["passed"] and "PASS" in out, cert["checks"]
    b, tf = cert["b"], cert["teacher_forced"]
    assert b["kind"] == "endpoint" and b["endpoint"] == cpu_server.base + "/v1" and b["dtype"] == "fp32"
    assert [m["id"] for m in b["models"]["data"]] == [b["model"]] and b["token_ids"] == "return_tokens_as_token_ids"
    assert cert["tokenizer"]["ok"] and cert["tokenizer"]["tokens"] >= 200
    assert {c["name"] for c in cert["checks"]} == {"tokenizer", "finite", "top1_agreement", "mean_kl",
                                                   "rel_mean_abs_diff"}
    # 2 windows x 64 positions, each judged on the server's 20 named tokens plus the prompt's own
    assert tf["positions"] == 128 and 20 <= tf["known_per_position"] <= 21 and tf["kl_is_lower_bound"]
    assert tf["top1_agreement"] == 1.0 and tf["rel_mean_abs_diff"] < 1e-6, tf
    assert cert["greedy"]["token_agreement"] == 1.0 and cert["greedy"]["identical"] == 2
    assert "KL lower bound" in out


def test_an_endpoint_with_bf16_rounded_matmuls_fails(trained_run, tmp_path, capsys):
    s = ServerProcess("--model", str(trained_run), "--target", "sim:lossy-accum")
    try:
        code, cert = parity(trained_run, s.base, tmp_path / "l.json")
    finally:
        s.close()
    assert code == 1 and not cert["passed"] and "FAIL" in capsys.readouterr().out
    failed = {c["name"] for c in cert["checks"] if not c["ok"]}
    assert failed == {"rel_mean_abs_diff"} and cert["teacher_forced"]["rel_mean_abs_diff"] > 5e-5, cert["checks"]


def test_an_endpoint_serving_another_model_fails_its_tokenizer_check(trained_run, random_hf, tmp_path, capsys):
    s = ServerProcess("--model", str(random_hf), "--target", "cpu")
    try:
        code, cert = parity(trained_run, s.base, tmp_path / "o.json")
    finally:
        s.close()
    assert code == 1 and not cert["passed"]
    tok = next(c for c in cert["checks"] if c["name"] == "tokenizer")
    assert not tok["ok"] and "tokenizer differs" in cert["tokenizer"]["reason"]
    assert "tokenizer differs" in capsys.readouterr().out


class Proxy:
    """A loopback HTTP server in front of `turnout serve` that refuses what a plainer server lacks: the
    `return_tokens_as_token_ids` extension, or logprobs altogether."""

    def __init__(self, upstream: str, refuse: str):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def answer(self, status: int, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                r = httpx.get(upstream + self.path)
                self.answer(r.status_code, r.content)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                proxy.seen.append(body)
                if refuse in body:
                    msg = {"error": {"message": f"{refuse}: not supported", "type": "invalid_request_error"}}
                    return self.answer(400, json.dumps(msg).encode())
                r = httpx.post(upstream + self.path, json=body, timeout=120)
                self.answer(r.status_code, r.content)

        self.seen: list[dict] = []
        self.http = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.base = f"http://127.0.0.1:{self.http.server_port}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self):
        self.http.shutdown()
        self.http.server_close()


def test_a_server_without_token_ids_is_read_through_the_tokenizer(trained_run, cpu_server, tmp_path):
    p = Proxy(cpu_server.base, "return_tokens_as_token_ids")
    try:
        code, cert = parity(trained_run, p.base, tmp_path / "t.json")
    finally:
        p.close()
    assert code == 0 and cert["passed"], cert["checks"]
    assert cert["b"]["token_ids"] == "token strings mapped through the tokenizer"
    assert cert["b"]["refused_fields"] == ["return_tokens_as_token_ids"]
    assert cert["teacher_forced"]["top1_agreement"] == 1.0 and cert["greedy"]["token_agreement"] == 1.0
    assert all("return_tokens_as_token_ids" not in b for b in p.seen[1:])  # asked once, then dropped


def test_down_or_logprob_less_endpoints_are_one_line_and_exit_2(trained_run, cpu_server, tmp_path, capsys):
    capsys.readouterr()
    assert cli(["parity", "--model", str(trained_run), "--a", "cpu", "--b", f"openai:http://127.0.0.1:{free_port()}",
                *SMALL]) == 2
    err = capsys.readouterr().err
    assert "down or unreachable" in err and len(err.strip().splitlines()) == 1, err
    p = Proxy(cpu_server.base, "logprobs")
    try:
        assert cli(["parity", "--model", str(trained_run), "--a", "cpu", "--b", f"openai:{p.base}", *SMALL]) == 2
    finally:
        p.close()
    err = capsys.readouterr().err
    assert "refused /completions (logprobs: not supported)" in err and len(err.strip().splitlines()) == 1, err
    for bad, why in ((["--b", "openai:ftp://x"], "expected openai:http"),
                     (["--b", f"openai:{cpu_server.base}", "--endpoint-model", "nope"], "does not serve model 'nope'"),
                     (["--b", f"openai:{cpu_server.base}", "--top-logprobs", "0"], "--top-logprobs"),
                     (["--b", "openai:http://a", "--a", "openai:http://b"], "one endpoint")):
        argv = ["parity", "--model", str(trained_run), "--a", "cpu", *bad, *SMALL]
        assert cli(argv) == 2, bad
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err


def test_the_top_k_kl_is_a_lower_bound_and_exact_when_k_is_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        V, k = 50, int(torch.randint(1, 50, (), generator=g))
        la, lb = (torch.randn(1, 1, V, generator=g, dtype=torch.float64) * 3 for _ in range(2))
        pa, lpa, lpb = la.softmax(-1), la.log_softmax(-1), lb.log_softmax(-1)
        true_kl = float((pa * (lpa - lpb)).sum())
        ids = lpb[0, 0].topk(k).indices.tolist()
        view = [[Scored(0, None), Scored(0, None, {i: float(lpb[0, 0, i]) for i in ids})]]
        got = compare_topk(la, view, local_is_a=True)["mean_kl"]
        assert got <= true_kl + 1e-9
        full = [[Scored(0, None), Scored(0, None, {i: float(lpb[0, 0, i]) for i in range(V)})]]
        assert compare_topk(la, full, local_is_a=True)["mean_kl"] == pytest.approx(true_kl, rel=1e-9)
