"""How long `turnout qualify` takes: seconds per stage and in total, for `cpu` and one emulated target.

    python bench/qualify_time.py [--config configs/tiny.toml] [--targets cpu,sim:lossy-accum] [--fresh]

Each target is qualified against the cpu reference in order, as a user would run them: the first run computes the
reference's training curve and stores it as a golden file, later runs reuse it. --fresh starts from an empty golden
folder and ignores the curves shipped with turnout (so the first run pays for the reference); without it the
user's golden folder and the shipped curves are used as they are. The budget is 60 s per qualification of the
tiny preset on two CPU cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from turnout.config import load_config  # noqa: E402
from turnout.qualify.run import qualify  # noqa: E402
from turnout.qualify.workload import Settings  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/tiny.toml")
    p.add_argument("--targets", default="cpu,sim:lossy-accum")
    p.add_argument("--fresh", action="store_true", help="use an empty golden folder and no shipped curves (the "
                   "first run computes the reference curve)")
    p.add_argument("--skip-collectives", action="store_true")
    a = p.parse_args()
    config = load_config(a.config)
    golden = tempfile.mkdtemp(prefix="golden-") if a.fresh else None
    rows = []
    for target in a.targets.split(","):
        out = tempfile.mkdtemp(prefix="qualify-")
        t0 = time.perf_counter()
        settings = Settings(golden_dir=golden, shipped_golden=not a.fresh, collectives=not a.skip_collectives)
        r = qualify(config, target, out, settings=settings, log=None)
        total = time.perf_counter() - t0
        reused = r["stages"]["training"]["evidence"].get("golden", {}).get("reused")
        rows.append((target, r["verdict"], total, {n: st["seconds"] for n, st in r["stages"].items()}, reused))
        print(f"{target}: {r['verdict']} in {total:.1f} s (reference curve {'reused' if reused else 'computed'}; "
              f"report {out}/report.html)")
        for n, st in r["stages"].items():
            print(f"  {n:<13} {st['status']:<8} {st['seconds']:6.1f} s")
    worst = max(t for _, _, t, _, _ in rows)
    print(f"slowest qualification: {worst:.1f} s ({'within' if worst <= 60 else 'OVER'} the 60 s budget; "
          f"collectives run in the background and overlap the other stages)")


if __name__ == "__main__":
    main()
