"""Start ranks on this machine through torchrun and end with the ranks' own exit code.

    python -m turnout.train.launch NPROC ARGS...    # `python -m turnout ARGS...` as NPROC ranks (torchrun --standalone)

torchrun (torch.distributed.run) exits 1 with a traceback of its own whatever made a rank fail. Run through this
module instead, the job exits with the failing rank's code -- 86 target untrusted, 87 hang, 88 unrecoverable,
2 refused input -- and the ranks' one-line reasons are the only report, as with a single process.
"""

from __future__ import annotations

import logging
import os
import sys


def command(nproc: int, args: list[str]) -> list[str]:
    """The command line that runs `turnout ARGS` as `nproc` ranks."""
    return [sys.executable, "-m", "turnout.train.launch", str(nproc), *args]


def relaunch(nproc: int, argv: list[str] | None = None) -> int:
    """Run `turnout ARGV` (default: this process's own command line) as `nproc` ranks, --nproc dropped from it,
    waiting for them and passing SIGTERM/SIGINT on (the launcher stops its ranks), so the job never outlives
    this process unattended; the ranks' exit code."""
    import signal
    import subprocess

    cleaned, skip = [], False
    for a in sys.argv[1:] if argv is None else argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            cleaned.append(a)
    child = subprocess.Popen(command(nproc, cleaned))

    def forward(signum: int, frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def exit_code(codes: list[int], first: int) -> int:
    """One code for a failed group: the first failing rank's, unless it was only killed in the teardown (a
    signal, negative), then any rank's own positive code; 1 when none has one."""
    if first > 0:
        return first
    return max((c for c in codes if c > 0), default=1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python -m turnout.train.launch NPROC ARGS...", file=sys.stderr)
        return 2
    nproc, rest = int(argv[0]), argv[1:]
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # each rank gets its share of the cores (torchrun would otherwise warn and set 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // nproc, 1)))
    # torchrun's agent logs each failed rank with its own traceback dump; the ranks have said why already
    for name in ("torch.distributed.elastic", "torch.distributed.elastic.multiprocessing.api",
                 "torch.distributed.elastic.agent.server.api"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "turnout", *rest])
    try:
        run(args)
    except ChildFailedError as e:
        _, first = e.get_first_failure()
        return exit_code([f.exitcode for f in e.failures.values()], first.exitcode)
    except SignalException as e:  # SIGTERM/SIGINT: torchrun passed it on to the ranks, which checkpointed and stopped
        return 128 + int(e.sigval)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
