"""Two ranks on gloo through torchrun: DDP, FSDP2, and resharded resume 2 -> 1 and 1 -> 2 from the same DCP files."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from turnout.cli import main

pytestmark = pytest.mark.dist

ARGS = ["--config", "configs/debug.toml", "--set", "train.steps=4", "--set", "train.batch_size=4",
        "--set", "train.seq_len=32", "--set", "train.eval_interval=0", "--set", "ckpt.interval=2",
        "--set", "train.warmup_steps=1", "--target", "cpu"]


def _train(run: Path, *extra: str, nproc: int = 1) -> None:
    cmd = [sys.executable, "-m", "turnout", "train", *ARGS, "--out", str(run), *extra, "--nproc", str(nproc)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def _metrics(run: Path) -> dict[int, dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return {m["step"]: m for m in rows if m["kind"] == "train"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", *ARGS, "--out", str(run)]) == 0
    return _metrics(run)


def _close(a: dict[int, dict], b: dict[int, dict], steps) -> None:
    for s in steps:
        # same global batch and order; only fp32 reduction order differs between world sizes
        assert a[s]["loss"] == pytest.approx(b[s]["loss"], rel=2e-5, abs=1e-6), s
        assert a[s]["grad_norm"] == pytest.approx(b[s]["grad_norm"], rel=1e-3), s
        assert a[s]["samples"] == b[s]["samples"]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_match_one(tmp_path, reference, parallel):
    run = tmp_path / parallel
    _train(run, "--set", f"train.parallel='{parallel}'", nproc=2)
    got = _metrics(run)
    _close(got, reference, range(1, 5))
    man = json.loads((run / "checkpoints" / "step-00000004" / "manifest.json").read_text())
    assert man["world_size"] == 2 and sum(f.endswith(".distcp") for f in man["files"]) == 2


def test_resume_two_ranks_to_one(tmp_path, reference):
    run = tmp_path / "2to1"
    _train(run, "--set", "train.parallel='fsdp'", "--until", "2", nproc=2)
    assert main(["train", "--out", str(run), "--resume"]) == 0
    _close(_metrics(run), reference, range(1, 5))
    ev = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "resume" and e["from_world_size"] == 2 for e in ev)


def test_resume_one_rank_to_two(tmp_path, reference):
    run = tmp_path / "1to2"
    assert main(["train", *ARGS, "--out", str(run), "--until", "2"]) == 0
    _train(run, "--resume", nproc=2)
    _close(_metrics(run), reference, range(1, 5))


def _rank1_flip(tmp_path: Path) -> str:
    """A target whose rank 1 alone gets a quiet bit flip in its all_reduce result at step 3."""
    prof = tmp_path / "one-rank.toml"
    prof.write_text('[profile]\ndescription = "rank 1: a quiet bit flip in its all_reduce result at step 3"\n'
                    '[[fault]]\nkind = "sdc"\nops = ["c10d::allreduce"]\nat_steps = [3]\nbit = 22\nranks = [1]\n')
    return f"sim:{prof}"


def test_diverged_replicas_are_caught_and_restored(tmp_path, reference):
    """Rank 1 alone gets a quiet flipped bit in its gradient all_reduce at step 3: losses and norms are all-reduced
    and cannot show it, the weight checksums do at step 4; the run goes back to step 2 and replays the same data."""
    run = tmp_path / "run"
    _train(run, "--set", "train.parallel='ddp'", "--set", "health.replica_check_interval=2", "--set",
           "health.checksums=false", "--target", _rank1_flip(tmp_path), nproc=2)
    ev = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    seen = [(e["kind"], e["step"]) for e in ev if e["kind"] in ("sdc", "rollback", "checkpoint", "end", "skip_batches")]
    assert seen == [("checkpoint", 2), ("sdc", 4), ("rollback", 5), ("checkpoint", 4), ("end", 4)]
    sdc = next(e for e in ev if e["kind"] == "sdc")
    assert sdc["classification"] == "replica" and sdc["ranks"] == [0, 1] and len(set(sdc["checksums"])) == 2
    assert next(e for e in ev if e["kind"] == "rollback")["to_step"] == 2
    assert [(e["step"], e["rank"], e["op"]) for e in ev if e["kind"] == "injected"] == [(3, 1, "c10d::allreduce")]
    _close(_metrics(run), reference, range(1, 5))  # the replayed steps are clean: as one process computes them


def test_one_ranks_corrupted_all_reduce_is_caught_in_the_same_step(tmp_path, reference):
    """The same quiet flip in rank 1's reduced gradients at step 3, with the checks on: the conservation check of
    that bucket fails on rank 1 alone, in step 3; both ranks re-run the step and the clean re-run is applied."""
    run = tmp_path / "run"
    _train(run, "--set", "train.parallel='ddp'", "--target", _rank1_flip(tmp_path), nproc=2)
    ev = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    sdc = [e for e in ev if e["kind"] == "sdc"]
    assert [(e["step"], e["classification"]) for e in sdc] == [(3, "transient")]
    seen = [e for e in ev if e["kind"] == "checksum"]
    assert [(e["step"], e["rank"]) for e in seen] == [(3, 1)] and "c10d::allreduce" in seen[0]["detail"]
    assert not any(e["kind"] == "rollback" for e in ev)
    _close(_metrics(run), reference, range(1, 5))


def test_a_device_error_one_rank_alone_sees_is_in_the_events(tmp_path, reference):
    """Rank 1 loses its device at the start of step 3 and retries in place (before any collective: the group stays
    in step). Rank 0 never sees it, yet events.jsonl records it, tagged with rank 1, beside its ground truth."""
    prof = tmp_path / "rank1.toml"
    prof.write_text('[profile]\ndescription = "rank 1 loses its device at step 3"\n'
                    '[[fault]]\nkind = "device_error"\nat_steps = [3]\nranks = [1]\n')
    run = tmp_path / "run"
    _train(run, "--set", "train.parallel='ddp'", "--target", f"sim:{prof}", nproc=2)
    ev = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert [(e["step"], e["rank"]) for e in ev if e["kind"] == "device_error"] == [(3, 1)]
    assert [(e["step"], e["rank"]) for e in ev if e["kind"] == "injected"] == [(3, 1)]
    assert all(e.get("rank", 0) == 0 or e["kind"] in ("device_error", "injected") for e in ev)
    _close(_metrics(run), reference, range(1, 5))


def _fsdp_rank1_flip(tmp_path: Path, reference, op: str) -> str:
    """Train under FSDP2 on 2 ranks with bit 27 flipped in rank 1's result of collective `op` at step 3; assert the
    flip was caught in that step, healed as transient without a rollback, and the run matches one process.
    Returns the sdc event's detail."""
    prof = tmp_path / "flip.toml"
    prof.write_text(f'[profile]\ndescription = "rank 1: a flipped bit in its {op} result at step 3"\n'
                    f'[[fault]]\nkind = "sdc"\nops = ["{op}"]\nat_steps = [3]\nbit = 27\nranks = [1]\n')
    run = tmp_path / "run"
    _train(run, "--set", "train.parallel='fsdp'", "--target", f"sim:{prof}", nproc=2)
    ev = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    assert [(e["step"], e["rank"], e["op"]) for e in ev if e["kind"] == "injected"] == [(3, 1, op.rstrip("_"))]
    sdc = [e for e in ev if e["kind"] == "sdc"]
    assert [(e["step"], e["classification"]) for e in sdc] == [(3, "transient")]
    assert not any(e["kind"] == "rollback" for e in ev)
    _close(_metrics(run), reference, range(1, 5))
    return sdc[0]["detail"]


def test_one_ranks_corrupted_reduce_scatter_is_caught_in_the_same_step_under_fsdp(tmp_path, reference):
    """FSDP2: rank 1's shard of one reduce-scatter comes back with a flipped bit at step 3. The conservation check
    of that reduce-scatter fails on both ranks (every rank checks every chunk) in step 3, names rank 1's chunk,
    and the clean re-run is applied: the run matches one process."""
    assert "c10d::reduce_scatter" in _fsdp_rank1_flip(tmp_path, reference, "c10d::_reduce_scatter_base_")


def test_one_ranks_corrupted_parameter_all_gather_is_caught_in_the_same_step_under_fsdp(tmp_path, reference):
    """FSDP2: rank 1's copy of the gathered parameters gets a flipped bit at step 3. Its products then run on a wrong
    weight that their own checksums cannot see; the all-gather's conservation check fails in step 3 and names rank
    1's copy; the clean re-run is applied and the run matches one process."""
    detail = _fsdp_rank1_flip(tmp_path, reference, "c10d::_allgather_base_")
    assert "c10d::all_gather" in detail and "rank 1's copy" in detail
