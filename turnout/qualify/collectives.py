"""Stage 6, collectives: all_reduce, all_gather, reduce_scatter and all_to_all on the target's process-group
backend, two ranks through torchrun, each rank computing under the target's compute() (so an emulated accelerator
that hangs or fails in collectives shows), checked against the analytically known answer at several sizes, plus
all_reduce bandwidth. With a MoE model, also expert parallelism's pattern: the per-destination row counts, then the
token rows themselves through an uneven all_to_all_single at the model's size (its tokens per rank times top-k,
`dim` wide; 60/40 split between the ranks, as routing loads are uneven), checked and timed.

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m turnout.qualify.collectives \\
        --target SPEC --out FILE          # each rank writes FILE.rankR.json

Inputs are small integers in fp32, so every correct answer is exact and any difference is an error. The whole job
is time-boxed by the caller: running past the limit is reported as a hang.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from turnout.backend import Backend, get_backend
from turnout.errors import one_line
from turnout.qualify.stage import StageResult

EXCHANGE_MAX_BYTES = 64 << 20  # the expert-parallel exchange is capped at this many bytes sent per rank
SIZES = (16, 4096, 262144)  # elements per rank: one vector, a cache line's worth of work, 1 MiB of fp32
BANDWIDTH_SIZE = 1 << 20  # elements (4 MiB fp32) for the all_reduce bandwidth measurement
WORLD = 2


# ---- the worker (runs in each rank) ----------------------------------------------------------------------------
def _pattern(n: int, offset: int = 0) -> torch.Tensor:
    """1..7 repeating: small integers, exact in fp32 after summing over ranks."""
    return ((torch.arange(n, dtype=torch.int64) + offset) % 7 + 1).to(torch.float32)


def _cases(rank: int, world: int, n: int, device: torch.device):
    """(name, run() -> output, expected) for each collective at n elements per rank."""
    tri = world * (world + 1) / 2

    def all_reduce():
        x = (_pattern(n) * (rank + 1)).to(device)
        dist.all_reduce(x)
        return x

    def all_gather():
        out = torch.empty(world * n, device=device)
        x = (_pattern(n) + 100 * rank).to(device)
        fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        fn(out, x)
        return out

    def reduce_scatter():
        out = torch.empty(n, device=device)
        x = (_pattern(world * n) * (rank + 1)).to(device)
        fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        fn(out, x)
        return out

    def all_to_all():
        out = torch.empty(world * n, device=device)
        x = torch.cat([torch.full((n,), float(100 * rank + j)) for j in range(world)]).to(device)
        dist.all_to_all_single(out, x)
        return out

    return [("all_reduce", all_reduce, _pattern(n) * tri),
            ("all_gather", all_gather, torch.cat([_pattern(n) + 100 * r for r in range(world)])),
            ("reduce_scatter", reduce_scatter, _pattern(n, rank * n) * tri),
            ("all_to_all", all_to_all, torch.cat([torch.full((n,), float(100 * j + rank)) for j in range(world)]))]


def exchange_splits(rank: int, rows: int) -> list[int]:
    """Rows rank `rank` sends to each of the two ranks: 60/40, the other way round on the other rank."""
    a = rows * 3 // 5
    return [a, rows - a] if rank == 0 else [rows - a, a]


def _exchange_rows(src: int, dst: int, n: int, dim: int) -> torch.Tensor:
    """The rows `src` sends `dst` [n, dim]: small integers, exact in fp32."""
    return ((torch.arange(n * dim, dtype=torch.int64) + 3 * dst) % 7 + 1 + 100 * src).to(torch.float32).view(n, dim)


def _exchange(rank: int, world: int, rows: int, dim: int, device: torch.device):
    """run() -> received rows, and the expected rows, for the expert-parallel exchange."""
    send = exchange_splits(rank, rows)
    expected = torch.cat([_exchange_rows(j, rank, exchange_splits(j, rows)[rank], dim) for j in range(world)])
    x = torch.cat([_exchange_rows(rank, j, send[j], dim) for j in range(world)]).to(device)

    def run():
        counts = torch.tensor(send, dtype=torch.int64, device=device)
        recv = torch.empty_like(counts)
        dist.all_to_all_single(recv, counts)  # the counts first: the splits are uneven
        out = torch.empty(int(recv.sum()), dim, device=device)
        dist.all_to_all_single(out, x, recv.tolist(), send)
        return out

    return run, expected


def _time(fn, backend: Backend):
    dist.barrier()
    backend.synchronize()
    t0 = time.perf_counter()
    out = fn()
    backend.synchronize()
    return out, time.perf_counter() - t0


def worker(spec: str, out: str, timeout_s: float, exchange: tuple[int, int] | None = None) -> int:
    """One rank: every collective at every size, the expert-parallel exchange of `exchange` = (rows sent per rank,
    dim) when given, then bandwidth; results to OUT.rankR.json."""
    from turnout.train.dist import init_distributed, shutdown_distributed

    backend = get_backend(spec)
    info = init_distributed(backend, timeout_s=timeout_s)
    rank, world = info.rank, info.world_size
    device = backend.device(info.local_rank)
    results, bandwidth = [], None
    step = 0
    for n in SIZES:
        for name, fn, expected in _cases(rank, world, n, device):
            step += 1
            backend.set_step(step)  # step-scheduled faults of an emulated target fire as in training steps 1..
            row = {"op": name, "numel": n, "bytes": 4 * n, "rank": rank}
            try:
                with backend.compute():
                    got, secs = _time(fn, backend)
                got = got.cpu()
                row.update(ok=bool(torch.equal(got, expected)), seconds=secs,
                           max_err=float((got - expected).abs().max()), host=got.device.type)
            except Exception as e:  # noqa: BLE001 - the failure is the result
                row.update(ok=False, error=one_line(e))
            results.append(row)
    ep = None
    if exchange is not None:
        rows, dim = exchange
        step += 1
        backend.set_step(step)
        row = {"op": "all_to_all_ep", "numel": rows * dim, "bytes": 4 * rows * dim, "rank": rank,
               "splits": exchange_splits(rank, rows)}
        try:
            fn, expected = _exchange(rank, world, rows, dim, device)
            with backend.compute():
                got, secs = _time(fn, backend)
                times = [_time(fn, backend)[1] for _ in range(3)]
            got = got.cpu()
            ok = got.shape == expected.shape and torch.equal(got, expected)
            t = statistics.median(times)
            row.update(ok=bool(ok), seconds=secs, host=got.device.type,
                       max_err=float((got - expected).abs().max()) if got.shape == expected.shape else float("inf"))
            ep = {"rows": rows, "dim": dim, "bytes": 4 * rows * dim, "seconds": t,
                  "algbw_GBps": 4 * rows * dim / t / 1e9}
        except Exception as e:  # noqa: BLE001 - the failure is the result
            row.update(ok=False, error=one_line(e))
        results.append(row)
    try:
        x = torch.ones(BANDWIDTH_SIZE, device=device)
        with backend.compute():
            _time(lambda: dist.all_reduce(x), backend)  # warm-up
            times = [_time(lambda: dist.all_reduce(x), backend)[1] for _ in range(5)]
        t = statistics.median(times)
        alg = 4 * BANDWIDTH_SIZE / t
        bandwidth = {"bytes": 4 * BANDWIDTH_SIZE, "seconds": t, "algbw_GBps": alg / 1e9,
                     "busbw_GBps": alg * 2 * (world - 1) / world / 1e9}
    except Exception as e:  # noqa: BLE001
        bandwidth = {"error": one_line(e)}
    record = {"rank": rank, "world": world, "backend": backend.collective, "results": results,
              "bandwidth": bandwidth, "exchange": ep, "injected": [e["kind"] for e in getattr(backend, "events", [])]}
    Path(f"{out}.rank{rank}.json").write_text(json.dumps(record))
    shutdown_distributed()
    return 0


# ---- the stage (runs in the qualifying process) -----------------------------------------------------------------
@dataclass
class Job:
    """A torchrun job in flight."""

    proc: subprocess.Popen | None
    out: Path
    log: Path
    started: float
    skipped: str | None = None


def skip_reason(target: Backend) -> str | None:
    """Why two ranks are impossible on this target (None: they are possible)."""
    if target.device_type == "mps":
        return "mps has no process-group backend for two ranks"
    if not target.collective:
        return f"{target.name} names no collective backend"
    if target.device_type == "cpu":
        return None if dist.is_available() and dist.is_gloo_available() else "this torch build has no gloo"
    if target.device_count() < WORLD:
        return f"only {target.device_count()} {target.device_type} device(s) visible; two ranks need two"
    return None


def exchange_for(dim: int, n_routed_experts: int, topk: int, tokens_per_rank: int) -> tuple[int, int] | None:
    """(rows each rank sends, dim) of the expert-parallel exchange at two ranks: tokens per rank times top-k rows
    of `dim` fp32 values, capped at EXCHANGE_MAX_BYTES; None for a model without routed experts."""
    if not n_routed_experts or not topk:
        return None
    rows = max(min(tokens_per_rank * topk, EXCHANGE_MAX_BYTES // (4 * dim)), 2)
    return rows, dim


def start(target: Backend, out_dir: Path, timeout_s: float, exchange: tuple[int, int] | None = None) -> Job:
    """Launch the two-rank job in the background (its own session, so a hang can be killed as a group);
    `exchange` (rows, dim): also run the expert-parallel exchange at that size."""
    why = skip_reason(target)
    if why:
        return Job(None, Path(), Path(), time.time(), skipped=why)
    out = out_dir / "collectives"
    log = out_dir / "collectives.log"
    for old in out_dir.glob("collectives.rank*.json"):
        old.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
           "-m", "turnout.qualify.collectives", "--target", target.name, "--out", str(out),
           "--timeout", str(timeout_s)] + (["--exchange", f"{exchange[0]}x{exchange[1]}"] if exchange else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Job(proc, out, log, time.time())


def finish(job: Job, target: Backend, timeout_s: float) -> StageResult:
    """Wait for the job (up to `timeout_s` since it started) and judge its results."""
    st = StageResult("collectives", "Collectives")
    if job.skipped:
        return st.skip(job.skipped)
    left = max(timeout_s - (time.time() - job.started), 0.1)
    try:
        rc = job.proc.wait(timeout=left)
    except subprocess.TimeoutExpired:
        _kill(job.proc)
        rc = None
    ranks = []
    for r in range(WORLD):
        path = Path(f"{job.out}.rank{r}.json")
        if path.is_file():
            ranks.append(json.loads(path.read_text()))
    done = [p.stat().st_mtime for p in job.out.parent.glob(f"{job.out.name}.rank*.json")]
    st.seconds = (max(done) if rc is not None and done else time.time()) - job.started  # the job's own duration
    st.evidence = {"world": WORLD, "backend": target.collective, "ranks": ranks, "exit_code": rc,
                   "timeout_s": timeout_s, "log": str(job.log)}
    if rc is None:
        st.find("collectives_hang", f"collectives on {target.name} ({target.collective}) did not finish within "
                                    f"{timeout_s:g} s: hang")
        st.summary = "hang"
        return st
    if len(ranks) < WORLD:
        tail = job.log.read_text(errors="replace").strip().splitlines()[-1:] if job.log.is_file() else []
        st.find("collectives_error", f"the two-rank job on {target.name} failed (exit code {rc}): "
                                     f"{one_line(tail[0], limit=200) if tail else 'no output'}")
        st.summary = "job failed"
        return st
    rows = [row for rk in ranks for row in rk["results"]]
    wrong = [r for r in rows if not r.get("ok") and "error" not in r]
    errors = [r for r in rows if "error" in r]
    for r in wrong[:4]:
        st.find("collectives_corrupt", f"{r['op']} of {r['numel']} elements on rank {r['rank']} returns wrong "
                                       f"values (max error {r.get('max_err', float('nan')):.3g})")
    for r in errors[:4]:
        st.find("collectives_error", f"{r['op']} of {r['numel']} elements on rank {r['rank']} failed: {r['error']}")
    bw = ranks[0].get("bandwidth") or {}
    st.evidence["bandwidth"] = bw
    ep = ranks[0].get("exchange")
    st.evidence["exchange"] = ep
    ok = len(rows) - len(wrong) - len(errors)
    st.summary = (f"{ok} of {len(rows)} checks correct over {WORLD} ranks via {target.collective}"
                  + (f"; all_reduce bus bandwidth {bw['busbw_GBps']:.3g} GB/s" if "busbw_GBps" in bw else "")
                  + (f"; expert-parallel all_to_all of {ep['rows']} x {ep['dim']} rows (60/40 split) "
                     f"{ep['algbw_GBps']:.3g} GB/s" if ep else ""))
    return st


def _kill(proc: subprocess.Popen) -> None:
    """Stop the torchrun job and its ranks (they share the session the job was started in)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    except PermissionError:
        proc.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m turnout.qualify.collectives")
    p.add_argument("--target", required=True)
    p.add_argument("--out", required=True, help="results prefix: each rank writes PREFIX.rankR.json")
    p.add_argument("--timeout", type=float, default=60.0, help="process-group timeout in seconds")
    p.add_argument("--exchange", default=None, help="ROWSxDIM: also the expert-parallel all_to_all at this size")
    a = p.parse_args(argv)
    ex = tuple(int(v) for v in a.exchange.split("x")) if a.exchange else None
    return worker(a.target, a.out, a.timeout, ex)


if __name__ == "__main__":
    sys.exit(main())
