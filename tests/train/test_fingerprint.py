"""The numerics fingerprint: in every checkpoint, and a run told its target's qualification says whether it applies."""

import json
from pathlib import Path

import pytest

from turnout.cli import main
from turnout.config import load_config
from turnout.train.build import build_model
from turnout.train.fingerprint import applies, differences, numerics_fingerprint

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--config", "configs/debug.toml", "--set", "train.steps=2", "--set", "train.batch_size=2",
        "--set", "train.seq_len=32", "--set", "train.eval_interval=0", "--set", "ckpt.interval=0",
        "--set", "train.warmup_steps=1"]


def _fingerprint(target: str, *overrides: str) -> dict:
    config = load_config(ROOT / "configs" / "debug.toml", list(overrides))
    built = build_model(config, target)
    return numerics_fingerprint(built.inner, built.backend, built.backend.compute_dtype_name(config))


def test_differences_name_each_changed_part():
    base = _fingerprint("cpu")
    assert differences(base, base) == []
    assert differences(base, _fingerprint("cpu")) == [], "the same model on the same target: the same fingerprint"
    kern = differences(base, _fingerprint("cpu", 'model.overrides.attn_impl="eager"'))
    assert kern == ["kernel attn_impl=eager (qualified with sdpa)"]
    shape = differences(base, _fingerprint("cpu", "model.overrides.n_layers=2"))
    assert len(shape) == 1 and "configuration differs" in shape[0]
    dev = differences(base, _fingerprint("sim:healthy"))
    assert len(dev) == 1 and dev[0].startswith("device sim:healthy")
    other = dict(base, software={**base["software"], "torch": "9.9"}, dtype="bf16")
    assert set(differences(base, other)) == {"dtype bf16 (qualified: fp32)",
                                             f"torch 9.9 (qualified: {base['software']['torch']})"}


def _qualify_json(tmp_path: Path, fingerprint: dict) -> Path:
    path = tmp_path / "q" / "qualify.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"verdict": "train-ready", "target": "cpu", "fingerprint": fingerprint}))
    return path.parent


@pytest.mark.parametrize("matches", [True, False])
def test_a_run_says_whether_its_qualification_applies(tmp_path, matches):
    fp = _fingerprint("cpu", "train.batch_size=2", "train.seq_len=32")
    if not matches:
        fp = dict(fp, dtype="bf16")
    q = _qualify_json(tmp_path, fp)
    run = tmp_path / "run"
    assert main(["train", *FAST, "--set", f"health.qualification={q}", "--out", str(run), "--target", "cpu"]) == 0
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    (ev,) = [e for e in events if e["kind"] == "qualification"]
    assert ev["applies"] is matches
    assert ("does NOT apply: dtype fp32 (qualified: bf16)" in ev["detail"]) is not matches
    man = json.loads(next((run / "checkpoints").glob("step-*/manifest.json")).read_text())
    assert man["fingerprint"]["model"]["architecture"] == "turnout Transformer (DeepSeek-V3)"
    assert applies({"verdict": "x", "fingerprint": man["fingerprint"]}, fp)[0] is matches


def test_an_unreadable_qualification_is_a_config_error(tmp_path, capsys):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "qualify.json").write_text('{"verdict": "train-ready"}')
    run = tmp_path / "run"
    assert main(["train", *FAST, "--set", f"health.qualification={tmp_path / 'q'}", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "health.qualification" in err and "fingerprint" in err and not run.exists()
