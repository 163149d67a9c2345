"""`turnout config`: every config section and field with its doc, what it accepts, its default and its value."""

from __future__ import annotations

import argparse
import json

HELP = ("show every config field with its doc, accepted values, default and current value (--config FILE and "
        "--set applied); --toml writes a commented config file to start from")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, metavar="FILE", help="TOML config whose values are shown "
                   "(default: the built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, as for train (repeatable)")
    p.add_argument("--changed", action="store_true", help="only the fields whose value differs from the default")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--toml", action="store_true", help="print the values as a TOML config file, each field's "
                      "doc as a comment above it")
    form.add_argument("--json", action="store_true", help="print a JSON list of sections and fields")


def _model_line(cfg) -> str:
    """What model.preset + model.overrides build: parameter counts and the main shape."""
    from turnout.model.flops import param_counts
    from turnout.train.build import model_args

    a = model_args(cfg)
    total, active = param_counts(a)
    return (f"builds {total / 1e6:.2f}M parameters ({active / 1e6:.2f}M active per token): dim {a.dim}, "
            f"{a.n_layers} layers ({a.n_dense_layers} dense), {a.n_routed_experts} routed experts "
            f"(top {a.n_activated_experts}), vocab {a.vocab_size}")


def run(args: argparse.Namespace) -> int:
    from turnout.config import explain, load_config
    from turnout.config import toml_value as _value

    cfg = load_config(args.config, args.overrides)  # bad file or value -> ConfigError -> one line, exit 2
    sections = explain(cfg)
    if args.changed:
        for s in sections:
            s["fields"] = [f for f in s["fields"] if f["value"] != f["default"]]
    if args.json:
        print(json.dumps(sections, indent=2, ensure_ascii=False))
        return 0
    source = args.config or "the built-in defaults"
    lines = []
    if args.toml:
        lines.append(f"# turnout config from {source}" + (" with " + " ".join(args.overrides) if args.overrides
                                                           else "") + "; every key can also be --set")
    else:
        lines.append(f"config from {source}" + (", with --set " + " ".join(args.overrides) if args.overrides
                                                else "") + "; * marks a value that is not the default")
    for s in sections:
        if args.changed and not s["fields"]:
            continue
        lines.append("")
        if args.toml:
            lines += [f"# {s['doc']}", f"[{s['section']}]"]
        else:
            lines.append(f"[{s['section']}]  {s['doc']}")
            if s["section"] == "model":
                lines.append(f"  # {_model_line(cfg)}")
        for f in s["fields"]:
            name = f["key"].split(".", 1)[1]
            if args.toml:
                lines += [f"# {f['doc']}; {f['accepts']}; default {_value(f['default'])}",
                          f"{name} = {_value(f['value'])}"]
            else:
                changed = f["value"] != f["default"]
                lines.append(f"{'*' if changed else ' '} {f['key']} = {_value(f['value'])}"
                             + (f"  (default {_value(f['default'])})" if changed else ""))
                lines.append(f"      {f['doc']}; {f['accepts']}")
    print("\n".join(lines))
    return 0
