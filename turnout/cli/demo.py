"""`turnout demo`: the whole story on the embedded default, one stage after another, with progress throughout.

1. what this machine has (`turnout targets`);
2. qualify the unproven accelerator (an emulated chip, sim:flaky) and cpu for the model;
3. train on the unproven chip anyway, with cpu as fallback: the health monitor catches its faults, diagnoses
   them by re-execution, and the run fails over to cpu and completes;
4. export the model, certify parity between cpu and the chip, serve it on the chip behind the OpenAI-compatible
   API (loopback) and print a few completions from it;
5. one HTML page linking the qualification reports, the run report and the parity certificate.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path

from turnout.config import ConfigError
from turnout.report.rundir import DemoDir

HELP = "the whole story on the embedded default: qualify, train with failover, certify, serve, one report"
PROMPTS = ("ROMEO:", "To be, or not to be", "KING HENRY:")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="folder for everything the demo writes (an earlier demo "
                   "run's files there are replaced; a folder holding anything else is refused)")
    p.add_argument("--config", default=None, help="run config (default: configs/demo.toml)")
    p.add_argument("--target", default="sim:flaky", help="the unproven accelerator")
    p.add_argument("--fallback", default="cpu", help="where the run goes when the target is no longer trusted")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    p.add_argument("--skip-qualify", action="store_true", help="leave out stage 2")


def _stage(n: int, title: str) -> None:
    print(f"\n=== {n}/5 {title}", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_and_ask(model: Path, target: str, prompts=PROMPTS, max_tokens: int = 40) -> list[dict]:
    """Start `turnout serve` on loopback (certificate required), ask for completions, stop it."""
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "turnout", "serve", "--model", str(model), "--target", target,
                             "--port", str(port), "--require-certificate"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited: {proc.stdout.read()[-500:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        name = httpx.get(f"{base}/v1/models", timeout=10).json()["data"][0]["id"]
        out = []
        for prompt in prompts:
            r = httpx.post(f"{base}/v1/completions", json={"model": name, "prompt": prompt, "max_tokens": max_tokens,
                                                           "temperature": 0.8, "top_k": 40, "seed": 0}, timeout=120)
            r.raise_for_status()
            out.append({"prompt": prompt, "completion": r.json()["choices"][0]["text"]})
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def run(args: argparse.Namespace) -> int:
    from turnout.cli.main import main

    out = Path(args.out)
    demo = DemoDir(out)
    try:
        demo.claim()  # never removes what an earlier demo run did not write
    except ValueError as e:
        raise ConfigError(f"--out {e}") from None
    config = args.config or ("configs/demo.toml" if Path("configs/demo.toml").is_file() else None)
    cfg_args = (["--config", config] if config else []) + [x for s in args.set for x in ("--set", s)]
    t_start = time.time()
    story: dict = {"target": args.target, "fallback": args.fallback, "qualify": {}}

    _stage(1, "targets: what this machine has")
    if main(["targets"]) != 0:
        return 1

    _stage(2, f"qualify {args.target} and {args.fallback} for this model")
    if args.skip_qualify:
        print("skipped (--skip-qualify)")
    else:
        for target in (args.target, args.fallback):
            qdir = demo.qualification(target)
            main(["qualify", "--target", target, *cfg_args, "--out", str(qdir.root)])
            q = qdir.read_result()
            story["qualify"][target] = {"dir": qdir.root.name, "verdict": q.get("verdict"), "reasons": q.get("reasons")}

    _stage(3, f"train on {args.target} anyway, with --fallback {args.fallback}")
    run_dir = demo.run.root
    code = main(["train", *cfg_args, "--out", str(run_dir), "--target", args.target, "--fallback", args.fallback])
    if code != 0:
        print(f"demo: training did not complete (exit {code}); see {demo.run.events}")
        return code

    _stage(4, f"export, certify parity {args.fallback} vs {args.target}, serve on {args.target}")
    main(["export", str(run_dir), "--hf", str(demo.hf)])
    code = main(["parity", "--model", str(run_dir), "--a", args.fallback, "--b", args.target])
    cert = sorted(run_dir.glob("parity-*.json"))
    story["certificate"] = cert[-1].name if cert else None
    if code == 0:
        story["completions"] = serve_and_ask(run_dir, args.target)
        for c in story["completions"]:
            print(f"--- {c['prompt']}{c['completion']}")
    else:
        print(f"demo: no passing certificate, so {args.target} does not serve this model")

    _stage(5, "the report")
    from turnout.report.demo_page import write_story  # matplotlib loads only when a page is drawn
    from turnout.report.run_data import summarize_run

    index = write_story(demo.root, story)
    s = summarize_run(run_dir)
    print(f"demo: {s['steps']} steps on {' -> '.join(s['targets'])}, final held-out loss {s['final_val_loss']:.3f}, "
          f"goodput {s['ettr']:.0%}, {len(s['incidents'])} incidents; {time.time() - t_start:.0f} s in all")
    print(f"report: {index.resolve()}")
    return 0
