"""GuardedTrainer: a transformers Trainer's steps under the guard, on a tiny LlamaForCausalLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments  # noqa: E402

from turnout.guard import TargetUntrusted  # noqa: E402
from turnout.integrations.transformers import GuardedTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "guarded_trainer.py"
sys.path.insert(0, str(EXAMPLE.parent))
from guarded_trainer import ToyCorpus  # noqa: E402


def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def arguments(out: Path, steps: int, **kw) -> TrainingArguments:
    return TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=3e-3,
                             save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
                             **({"logging_steps": 1000} | kw))


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def test_the_trainer_on_the_flaky_chip_heals_its_faults_then_leaves_a_checkpoint_when_it_must_go(tmp_path):
    trainer = GuardedTrainer(model=llama(), args=arguments(tmp_path, 130), train_dataset=ToyCorpus(600, 32, 128),
                             checkpoint_every=10)
    with pytest.raises(TargetUntrusted, match="3 device errors"):
        trainer.train()
    seen = [(e["kind"], e["step"]) for e in events(tmp_path / "turnout")]
    assert {("device_error", 25), ("sdc", 43), ("sdc", 97), ("device_error", 100), ("untrusted", 110)} <= set(seen)
    sdc = [e for e in events(tmp_path / "turnout") if e["kind"] == "sdc"]
    assert all(e["classification"] == "transient" and "q_proj" in e["detail"] for e in sdc)  # located
    untrusted = next(e for e in events(tmp_path / "turnout") if e["kind"] == "untrusted")
    assert untrusted["checkpoint"].endswith("step-00000109")
    assert (tmp_path / "turnout" / "report.html").is_file()


@pytest.fixture(autouse=True)
def _flaky_target(monkeypatch):
    monkeypatch.setenv("TURNOUT_TARGET", "sim:flaky")


def test_healthy_steps_match_a_plain_trainer_bit_for_bit(tmp_path, monkeypatch):
    """Off the faulty steps, the guard changes nothing: 20 steps equal those of transformers' own Trainer."""
    from transformers import Trainer

    monkeypatch.setenv("TURNOUT_TARGET", "cpu")
    data = ToyCorpus(200, 32, 128)
    plain = llama()
    a = Trainer(model=plain, args=arguments(tmp_path / "a", 20, max_grad_norm=1.0, logging_steps=5),
                train_dataset=data)
    a.train()
    guarded = llama()
    b = GuardedTrainer(model=guarded, args=arguments(tmp_path / "b", 20, max_grad_norm=1.0, logging_steps=5),
                       train_dataset=data, health={"checksums": False})
    b.train()
    for (name, x), y in zip(plain.state_dict().items(), guarded.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=name)
    # the Trainer's own logs: the same losses and (pre-clip) gradient norms, read from the guard's step
    logged = [[(h["loss"], h["grad_norm"]) for h in t.state.log_history if "grad_norm" in h] for t in (a, b)]
    assert len(logged[0]) == len(logged[1]) == 4 and all(g > 0 for _, g in logged[1])
    for (la, ga), (lb, gb) in zip(*logged):
        assert lb == pytest.approx(la, rel=1e-5) and gb == pytest.approx(ga, rel=1e-4)


def test_gradient_accumulation_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="gradient_accumulation_steps=2") as e:
        GuardedTrainer(model=llama(), args=arguments(tmp_path, 10, gradient_accumulation_steps=2),
                       train_dataset=ToyCorpus(40, 32, 128))
    assert "\n" not in str(e.value)


def test_supervised_on_the_flaky_chip_it_fails_over_to_cpu_and_completes(tmp_path):
    """The README's command: the Trainer example under `turnout supervise --fallback cpu`."""
    out = tmp_path / "llama"
    run = out / "turnout"
    env = {k: v for k, v in os.environ.items() if k != "TURNOUT_TARGET"}
    r = subprocess.run([sys.executable, "-m", "turnout", "supervise", "--target", "sim:flaky", "--fallback", "cpu",
                        "--run", str(run), "--", sys.executable, str(EXAMPLE), "--out", str(out), "--steps", "130"],
                       capture_output=True, text=True, timeout=600, env=dict(env, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "done: 130 batches" in r.stdout
    ev = events(run)
    kinds = [(e["kind"], e["target"]) for e in ev]
    assert ("untrusted", "sim:flaky") in kinds and ("failover", "sim:flaky") in kinds
    resume = next(e for e in ev if e["kind"] == "resume")
    assert resume["target"] == "cpu" and resume["from_target"] == "sim:flaky" and resume["step"] == 109
    assert ev[-1]["kind"] == "end" and ev[-1]["target"] == "cpu" and ev[-1]["step"] == 130
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rows] == list(range(1, 131))  # every step once: 1-109 on the chip, 110-130 on cpu
    page = (run / "report.html").read_text()
    assert "sim:flaky" in page and "failover" in page and "q_proj" in page
