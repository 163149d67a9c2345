"""`turnout parity`: certify that a model computes the same on two targets (logits and greedy text)."""

from __future__ import annotations

import argparse
import json

from turnout.config import ConfigError

HELP = ("compare a model on two targets, or on a target and an OpenAI-compatible server, and write a parity "
        "certificate: --model PATH --a SPEC --b SPEC|openai:URL [--out FILE]")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run folder, checkpoint folder or HF DeepseekV3 directory")
    p.add_argument("--a", required=True, metavar="SPEC", help="reference target (usually the training target)")
    p.add_argument("--b", required=True, metavar="SPEC",
                   help="target under test, or openai:URL for a server said to serve the same weights (either "
                        "side may be the server)")
    p.add_argument("--model-b", default=None, metavar="PATH",
                   help="other weights to run on --b (e.g. a converted copy); default: --model")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="certificate path (default: parity-A-vs-B.json beside the model)")
    p.add_argument("--trained-on", default=None, metavar="SPEC", help="training target of an HF directory")
    p.add_argument("--text", default=None, metavar="FILE", help="held-out text to use instead of the run's")
    p.add_argument("--sequences", type=int, default=4, help="teacher-forced windows (default 4)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per window (default 128)")
    p.add_argument("--prompts", type=int, default=4, help="greedy prompts (default 4)")
    p.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per prompt (default 32)")
    p.add_argument("--endpoint-model", default=None, metavar="NAME",
                   help="the model id to ask the endpoint for (default: the one its /v1/models lists)")
    p.add_argument("--top-logprobs", type=int, default=20, metavar="K",
                   help="alternatives per position the endpoint is asked for (default 20, vLLM's limit)")
    p.add_argument("--endpoint-dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="what the endpoint computes in; picks the pass rule's precision class (default fp32)")
    p.add_argument("--json", action="store_true", help="print the certificate instead of a summary")


def run(args: argparse.Namespace) -> int:
    from turnout.serve.certificate import default_path, make_certificate, write_certificate
    from turnout.serve.endpoint import is_endpoint
    from turnout.serve.parity import ParitySettings, run_parity

    for name in ("sequences", "seq_len", "prompts", "new_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    settings = ParitySettings(sequences=args.sequences, seq_len=args.seq_len, prompts=args.prompts,
                              new_tokens=args.new_tokens)
    log = None if args.json else print
    if is_endpoint(args.a) or is_endpoint(args.b):
        if args.model_b is not None:
            raise ConfigError("--model-b: an endpoint serves its own weights; --model-b is for a second local side")
        if not 1 <= args.top_logprobs <= 20:
            raise ConfigError(f"--top-logprobs: expected 1..20, got {args.top_logprobs}")
        from turnout.serve.endpoint_parity import run_endpoint_parity

        report = run_endpoint_parity(args.model, args.a, args.b, trained_on=args.trained_on, text_file=args.text,
                                     settings=settings, endpoint_model=args.endpoint_model,
                                     top_logprobs=args.top_logprobs, endpoint_dtype=args.endpoint_dtype, log=log)
    else:
        report = run_parity(args.model, args.a, args.b, model_b=args.model_b, trained_on=args.trained_on,
                            text_file=args.text, settings=settings, log=log)
    cert = make_certificate(report)
    from turnout.serve.loader import model_identity

    path = write_certificate(cert, args.out or default_path(model_identity(args.model), cert["a"]["target"],
                                                            cert["b"]["target"]))
    if args.json:
        print(json.dumps(cert, indent=1))
        return 0 if cert["passed"] else 1
    tf, g = cert["teacher_forced"], cert["greedy"]
    view = tf.get("view") == "top-k logprobs"
    what, kl = ("|dlogprob| on the endpoint's top tokens", "KL lower bound") if view else ("|dlogit|", "KL")
    print(f"teacher-forced ({cert['text']['tokens']} tokens): max {what} {tf['max_abs_diff']:.3g}, mean "
          f"{tf['mean_abs_diff']:.3g} (relative {tf['rel_mean_abs_diff']:.3g}), {kl} mean {tf['mean_kl']:.3g} max "
          f"{tf['max_kl']:.3g}, top-1 agreement {tf['top1_agreement']:.4f}")
    print(f"greedy ({g['prompts']} prompts x {g['new_tokens']} tokens): token agreement {g['token_agreement']:.4f}, "
          f"{g['identical']} identical, first divergence {g['first_divergence']}")
    for c in cert["checks"]:
        value = f"{c['value']:.4g}" if isinstance(c["value"], float) else c["value"]
        print(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']} = {value} (rule {c['rule']}, "
              f"{cert['precision_class']})")
    if (cert.get("tokenizer") or {}).get("reason"):
        print(f"  {cert['tokenizer']['reason']}")
    print(f"{'PASS' if cert['passed'] else 'FAIL'}: {cert['a']['target']} vs {cert['b']['target']}; "
          f"certificate {path}")
    return 0 if cert["passed"] else 1
