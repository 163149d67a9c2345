"""`turnout targets`: every known target, whether it is here, what really runs on it."""

from __future__ import annotations

import argparse
import json

HELP = "list known targets: availability (and why not), probed dtypes, collective backend, matmul peak"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("specs", nargs="*", metavar="SPEC", help="targets to describe (default: all known)")
    p.add_argument("--peak", action="store_true", help="measure the dense matmul peak of each available dtype")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from turnout.backend import default_spec, get_backend, known_targets

    backends = [get_backend(s) for s in (args.specs or known_targets())]  # bad spec -> TargetError -> exit 2
    default = default_spec()
    rows = []
    for b in backends:
        info = b.describe(peak=args.peak)
        info["default"] = info["spec"] == default
        rows.append(info)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"turnout targets (default: {default})")
    for col in ("target", "available", "dtypes", "collective", "detail") + (("peak TFLOP/s",) if args.peak else ()):
        table.add_column(col)
    for r in rows:
        peak = ", ".join(f"{d} {v / 1e12:.3g}" for d, v in r.get("peak_flops", {}).items())
        cells = [r["spec"] + (" *" if r["default"] else ""), "yes" if r["available"] else "no",
                 ", ".join(r["dtypes"]) or "-", r["collective"], r["detail"]]
        table.add_row(*cells, *((peak or "-",) if args.peak else ()))
    console = Console()
    if not console.is_terminal:  # piped or logged: don't squeeze the table into 80 columns
        console = Console(width=160)
    console.print(table)
    return 0
