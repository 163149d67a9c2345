"""`turnout parity`: certify that a model computes the same on two targets (logits and greedy text)."""

from __future__ import annotations

import argparse
import json

from turnout.config import ConfigError

HELP = "compare a model on two targets and write a parity certificate: --model PATH --a SPEC --b SPEC [--out FILE]"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run folder, checkpoint folder or HF DeepseekV3 directory")
    p.add_argument("--a", required=True, metavar="SPEC", help="reference target (usually the training target)")
    p.add_argument("--b", required=True, metavar="SPEC", help="target under test")
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
    p.add_argument("--json", action="store_true", help="print the certificate instead of a summary")


def run(args: argparse.Namespace) -> int:
    from turnout.serve.certificate import default_path, make_certificate, write_certificate
    from turnout.serve.parity import ParitySettings, run_parity

    for name in ("sequences", "seq_len", "prompts", "new_tokens"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    settings = ParitySettings(sequences=args.sequences, seq_len=args.seq_len, prompts=args.prompts,
                              new_tokens=args.new_tokens)
    report = run_parity(args.model, args.a, args.b, model_b=args.model_b, trained_on=args.trained_on,
                        text_file=args.text, settings=settings, log=None if args.json else print)
    cert = make_certificate(report)
    from turnout.serve.loader import model_identity

    path = write_certificate(cert, args.out or default_path(model_identity(args.model), cert["a"]["target"],
                                                            cert["b"]["target"]))
    if args.json:
        print(json.dumps(cert, indent=1))
        return 0 if cert["passed"] else 1
    tf, g = cert["teacher_forced"], cert["greedy"]
    print(f"teacher-forced ({cert['text']['tokens']} tokens): max |dlogit| {tf['max_abs_diff']:.3g}, mean "
          f"{tf['mean_abs_diff']:.3g} (relative {tf['rel_mean_abs_diff']:.3g}), KL mean {tf['mean_kl']:.3g} max "
          f"{tf['max_kl']:.3g}, top-1 agreement {tf['top1_agreement']:.4f}")
    print(f"greedy ({g['prompts']} prompts x {g['new_tokens']} tokens): token agreement {g['token_agreement']:.4f}, "
          f"{g['identical']} identical, first divergence {g['first_divergence']}")
    for c in cert["checks"]:
        value = f"{c['value']:.4g}" if isinstance(c["value"], float) else c["value"]
        print(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']} = {value} (rule {c['rule']}, "
              f"{cert['precision_class']})")
    print(f"{'PASS' if cert['passed'] else 'FAIL'}: {cert['a']['target']} vs {cert['b']['target']}; "
          f"certificate {path}")
    return 0 if cert["passed"] else 1
