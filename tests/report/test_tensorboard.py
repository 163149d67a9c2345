"""TensorBoardSink, read back with tensorboard's own reader: what a person sees in `tensorboard --logdir`."""

import numpy as np
import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

from turnout.report.tensorboard import TensorBoardSink  # noqa: E402

T0 = 1_700_000_000.0


def _train(step, loss, **extra):
    """A row shaped like Trainer.record's."""
    return {"kind": "train", "step": step, "time": T0 + step, "target": "cpu", "loss": loss, "ce": loss - 0.1,
            "mtp": 0.0, "balance": 0.01, "grad_norm": 0.5 + step, "grad_norm_layers": {"embed": 0.1, "layers.0": 0.2},
            "lr": 1e-3 * step, "tokens_per_s": 1234.5, "mfu": 0.0, "step_time": 0.25, "samples": 8 * step,
            "expert_load": [[0.5, 0.5]], "expert_load_cv": 0.0, "memory": 4096, **extra}


def _read(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})  # 0: keep every point
    acc.Reload()
    return acc


def _points(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_rows_and_events_read_back_exactly(tmp_path):
    sink = TensorBoardSink(tmp_path / "tb")
    losses = [10.123456789, 9.5, float("nan"), 8.25]
    for step, loss in enumerate(losses, start=1):
        sink.metrics(_train(step, loss, grad_norm=float("inf") if step == 3 else 0.5 + step))
    sink.metrics({"kind": "eval", "step": 4, "time": T0 + 4.5, "target": "cpu", "val_loss": 8.5})
    sink.event({"step": 3, "time": T0 + 3.5, "kind": "spike", "target": "cpu", "detail": "loss is NaN",
                "loss": float("nan")})
    sink.close()

    acc = _read(tmp_path / "tb")
    # NaN loss and inf grad norm of step 3 are skipped; the other values come back at float32 precision
    assert _points(acc, "train/loss") == [(s, float(np.float32(v))) for s, v in [(1, 10.123456789), (2, 9.5),
                                                                                   (4, 8.25)]]
    assert [s for s, _ in _points(acc, "train/grad_norm")] == [1, 2, 4]
    assert [s for s, _ in _points(acc, "train/ce")] == [1, 2, 4]  # ce = NaN - 0.1 at step 3
    assert [e.wall_time for e in acc.Scalars("train/loss")] == [T0 + 1, T0 + 2, T0 + 4]
    assert _points(acc, "eval/val_loss") == [(4, 8.5)]
    assert _points(acc, "train/memory_bytes") == [(s, 4096.0) for s in (1, 2, 3, 4)]
    assert _points(acc, "train/step_time_s")[0] == (1, 0.25)
    assert _points(acc, "train/lr")[1] == (2, float(np.float32(2e-3)))
    assert _points(acc, "grad_norm/layers.0")[0] == (1, float(np.float32(0.2)))
    scalars = set(acc.Tags()["scalars"])
    for tag in ("train/mtp", "train/balance", "train/tokens_per_s", "train/mfu", "train/samples",
                "train/expert_load_cv", "grad_norm/embed"):
        assert tag in scalars
    # axes, labels and lists are not values
    assert not scalars & {"train/step", "train/time", "train/target", "train/expert_load", "train/memory"}

    (text,) = acc.Tensors("events/spike/text_summary")  # SummaryWriter.add_text appends /text_summary
    assert text.step == 3 and text.wall_time == T0 + 3.5
    assert tensor_util.make_ndarray(text.tensor_proto).tolist() == [b"step 3 [cpu]: loss is NaN"]


def test_repeated_steps_after_a_rollback_keep_both_points(tmp_path):
    sink = TensorBoardSink(tmp_path / "tb")
    for step, loss in [(1, 3.0), (2, 2.5), (3, 50.0), (2, 2.75), (3, 2.5)]:  # went back to step 1 and redid 2, 3
        sink.metrics(_train(step, loss))
    sink.close()
    assert _points(_read(tmp_path / "tb"), "train/loss") == [(1, 3.0), (2, 2.5), (3, 50.0), (2, 2.75), (3, 2.5)]


def test_constructing_writes_nothing_until_used(tmp_path):
    log_dir = tmp_path / "run" / "tensorboard"
    sink = TensorBoardSink(log_dir)
    assert not (tmp_path / "run").exists()
    sink.flush()
    sink.close()
    assert not log_dir.exists()
    sink = TensorBoardSink(log_dir)
    sink.metrics(_train(1, 2.0))
    sink.flush()
    (written,) = log_dir.iterdir()
    assert written.name.startswith("events.out.tfevents.")
    sink.close()
    sink.close()  # twice is harmless
    assert _points(_read(log_dir), "train/loss") == [(1, 2.0)]
