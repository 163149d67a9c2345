"""A run never loses a good checkpoint: corrupt ones are set aside, never counted toward ckpt.keep, never deleted,
never stand in for the step they name; an edited manifest is refused like an altered shard."""

import json
import random
from pathlib import Path

from turnout.ckpt import verify
from turnout.cli import main

FAST = ["--config", "configs/debug.toml", "--set", "train.batch_size=4", "--set", "train.seq_len=32",
        "--set", "train.eval_interval=0", "--set", "train.eval_batches=1", "--set", "train.warmup_steps=2",
        "--set", "ckpt.interval=2", "--set", "ckpt.keep=2"]


def _events(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    return [e for e in rows if e.get("kind") == kind]


def _folders(run: Path) -> tuple[list[str], list[str], list[str]]:
    """(verified step folders, failing step folders, set-aside folders) by name."""
    cks = run / "checkpoints"
    steps = sorted(p for p in cks.iterdir() if p.name.startswith("step-") and "." not in p.name)
    good = [p.name for p in steps if not verify(p)]
    return good, [p.name for p in steps if p.name not in good], sorted(p.name for p in cks.glob("*.corrupt*"))


def _flip(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def test_a_corrupt_newest_checkpoint_is_set_aside_and_written_again(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--set", "train.steps=6", "--out", str(run)]) == 0
    _flip(next((run / "checkpoints" / "step-00000006").glob("*.distcp")), random.Random(0))
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert _events(run, "resume")[-1]["step"] == 4
    refused = _events(run, "checkpoint_refused")
    assert len(refused) == 1 and "sha256 mismatch" in refused[0]["detail"] and "step-00000006.corrupt" in \
        refused[0]["detail"]
    good, bad, aside = _folders(run)
    assert good == ["step-00000004", "step-00000006"] and not bad and aside == ["step-00000006.corrupt"]


def test_keep_counts_verified_checkpoints_only(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--set", "train.steps=8", "--out", str(run)]) == 0
    for step in (6, 8):  # both kept checkpoints go bad: the run starts over, and keeps two good ones again
        _flip(next((run / "checkpoints" / f"step-{step:08d}").glob("*.distcp")), random.Random(step))
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert _events(run, "resume")[-1]["step"] == 0
    good, bad, aside = _folders(run)
    assert good == ["step-00000006", "step-00000008"] and not bad
    assert aside == ["step-00000006.corrupt", "step-00000008.corrupt"]  # moved aside, not deleted


def test_an_edited_manifest_is_refused(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--set", "train.steps=6", "--out", str(run)]) == 0
    path = run / "checkpoints" / "step-00000006" / "manifest.json"
    m = json.loads(path.read_text())
    m["samples"] = 0  # rewinding the data position would replay batches the model already learned from
    path.write_text(json.dumps(m))
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert _events(run, "resume")[-1]["step"] == 4
    assert "digest does not match" in _events(run, "checkpoint_refused")[-1]["detail"]


def test_checkpoint_chaos(tmp_path):
    """Random corruption of random checkpoint files between resumes, many rounds: every resume starts from the
    newest checkpoint that verifies, every round that saves leaves only verified checkpoints (at most `keep`),
    and the run ends complete."""
    rng = random.Random(20261202)
    run, steps = tmp_path / "run", 16
    assert main(["train", *FAST, "--set", f"train.steps={steps}", "--out", str(run), "--until", "4"]) == 0
    for _ in range(8):
        cks = sorted(p for p in (run / "checkpoints").glob("step-*") if "." not in p.name)
        for folder in rng.sample(cks, rng.randint(1, len(cks))):
            _flip(rng.choice([p for p in folder.iterdir() if p.is_file()]), rng)
        newest_good = max((int(n.split("-")[1]) for n in _folders(run)[0]), default=0)
        resumes, saves = len(_events(run, "resume")), len(_events(run, "checkpoint"))
        assert main(["train", "--out", str(run), "--resume", "--until", str(rng.randint(2, steps))]) == 0
        if newest_good < steps:
            assert _events(run, "resume")[-1]["step"] == newest_good
        else:  # finished: said, and nothing is trained
            assert len(_events(run, "resume")) == resumes
        good, bad, _ = _folders(run)
        if len(_events(run, "checkpoint")) > saves:  # a save prunes: every folder left is verified, `keep` at most
            assert not bad and 1 <= len(good) <= 2
    assert main(["train", "--out", str(run), "--resume"]) == 0
    good, bad, _ = _folders(run)
    assert good[-1] == f"step-{steps:08d}" and _events(run, "end")
