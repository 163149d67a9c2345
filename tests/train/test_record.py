"""A run's record reaches TensorBoard too when asked: the same losses, read back with tensorboard's own reader."""

import json

import pytest

from turnout.cli import main

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

FAST = ["--config", "configs/debug.toml", "--set", "train.steps=4", "--set", "train.batch_size=4",
        "--set", "train.seq_len=32", "--set", "train.eval_interval=2", "--set", "train.eval_batches=1",
        "--set", "ckpt.interval=2", "--set", "train.warmup_steps=1"]


def test_training_writes_the_same_scalars_and_events_to_tensorboard(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--set", 'train.log_to=["tensorboard"]', "--out", str(run), "--target", "cpu"]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    losses = {s.step: s.value for s in acc.Scalars("train/loss")}
    assert losses == pytest.approx({r["step"]: r["loss"] for r in rows if r["kind"] == "train"}, rel=1e-6)
    assert [s.step for s in acc.Scalars("eval/val_loss")] == [r["step"] for r in rows if r["kind"] == "eval"]
    events = acc.Tags()["tensors"]
    assert "events/start/text_summary" in events and "events/end/text_summary" in events


def test_without_log_to_there_is_no_tensorboard_folder(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *FAST, "--set", "train.steps=2", "--out", str(run), "--target", "cpu"]) == 0
    assert not (run / "tensorboard").exists()
