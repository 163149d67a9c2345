"""`turnout serve`: an OpenAI-compatible HTTP server (completions, chat, streaming) for one model on one target."""

from __future__ import annotations

import argparse
import os
import socket

from turnout.cli.generate import add_speculative_argument, build_engine
from turnout.config import ConfigError

HELP = ("serve a model over an OpenAI-compatible API: --model PATH [--target SPEC] [--host 127.0.0.1] "
        "[--port 8000] [--api-key KEY] [--require-certificate]")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="run folder, checkpoint folder or HF DeepseekV3 directory")
    p.add_argument("--target", default=None, help="where to run (default: $TURNOUT_TARGET or the first accelerator)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on (default 8000)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 "
                   "(default: $TURNOUT_API_KEY; unset: no key)")
    p.add_argument("--require-certificate", action="store_true",
                   help="refuse to start unless a passing parity certificate covers these weights on this target "
                        "against the target they were trained on (see `turnout parity`)")
    p.add_argument("--trained-on", default=None, metavar="SPEC",
                   help="the training target of an HF directory (checkpoints record it in their manifest)")
    p.add_argument("--certificate", action="append", default=[], metavar="FILE",
                   help="a parity certificate to consider besides MODEL's parity-*.json (repeatable)")
    p.add_argument("--qualification", default=None, metavar="QUALIFY_JSON",
                   help="qualify.json (or its folder) of the serving target: says at start whether its verdict applies "
                   "to this model, its serving kernels, dtype, device and software (their numerics fingerprint)")
    p.add_argument("--max-batch", type=int, default=16, help="requests decoded together (default 16)")
    add_speculative_argument(p)
    p.add_argument("--max-context", type=int, default=None,
                   help="context length in tokens (default: the model's, capped at 8192)")
    p.add_argument("--model-name", default=None, help="the model id clients send (default: the folder's name)")
    p.add_argument("--max-body-bytes", type=int, default=None, metavar="N",
                   help="larger request bodies get 413 before they are read (default: room for 16 of the longest "
                        "prompts the context can hold, at least 1 MiB)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="the HTTP server's (uvicorn's) log level (default warning; info also logs each request)")


def run(args: argparse.Namespace) -> int:
    from turnout.backend import canonical_spec, get_backend
    from turnout.serve import load_for_serving, model_identity, require_certificate
    from turnout.serve.server import serve

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: expected 0..65535, got {args.port}")
    if args.max_batch < 1:
        raise ConfigError(f"--max-batch: expected an integer >= 1, got {args.max_batch}")
    if args.max_context is not None and args.max_context < 2:
        raise ConfigError(f"--max-context: expected an integer >= 2, got {args.max_context}")
    if args.max_body_bytes is not None and args.max_body_bytes < 1024:
        raise ConfigError(f"--max-body-bytes: expected an integer >= 1024, got {args.max_body_bytes}")
    target = get_backend(args.target).name  # resolves the default and checks the spec
    trained_on = canonical_spec(args.trained_on) if args.trained_on else None
    if args.require_certificate:  # before loading: refuse fast, on the weights' hash alone
        ident = model_identity(args.model)
        if trained_on and ident.trained_on is None:
            ident = ident.with_trained_on(trained_on)
        cert = require_certificate(ident, target, args.certificate)
        print(f"certificate: {cert}" if cert else f"certificate: not needed ({target} is the training target)")
    qualification = None
    if args.qualification:
        from turnout.train.fingerprint import read_qualification
        try:
            qualification = read_qualification(args.qualification)
        except ValueError as e:
            raise ConfigError(f"--qualification: {e}") from None
    _check_bind(args.host, args.port)
    lm = load_for_serving(args.model, target, trained_on=trained_on)
    if qualification is not None:  # a verdict is quoted only for the numerics it saw
        from turnout.backend.spec import dtype_name
        from turnout.train.fingerprint import applies, numerics_fingerprint
        _ok, line = applies(qualification, numerics_fingerprint(lm.model, lm.backend, dtype_name(lm.dtype)))
        print(line, flush=True)
    context = args.max_context or min(lm.model.args.max_seq_len, 8192)
    engine = build_engine(lm, args, max_batch=args.max_batch, max_context=context)
    name = args.model_name or lm.name
    key = args.api_key if args.api_key is not None else os.environ.get("TURNOUT_API_KEY") or None
    dtype = str(lm.dtype).removeprefix("torch.")
    if not key and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} without an API key; anyone who can reach it can use it", flush=True)
    print(f"serving {name} on {lm.backend.name} ({dtype}) at http://{args.host}:{args.port}/v1 - context "
          f"{engine.context}, batch {engine.max_batch}, latent cache {engine.cache_bytes_per_token} B/token"
          f"{', MTP speculative decoding' if engine.speculative else ''}"
          f"{', API key required' if key else ''}", flush=True)
    serve(engine, name, host=args.host, port=args.port, api_key=key, target=lm.backend.name, dtype=dtype,
          log_level=args.log_level, max_body_bytes=args.max_body_bytes)
    return 0


def _check_bind(host: str, port: int) -> None:
    """Refuse early (before loading weights) when the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"--host {host} --port {port}: cannot bind ({e.strerror or e})") from None
