"""`turnout parity` and certificates: healthy passes, bf16-rounded matmuls and corrupted weights fail, serving
refuses what no passing certificate covers."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from turnout.ckpt.restore import load_model
from turnout.model import save_pretrained
from turnout.serve import CertificateError, model_identity, require_certificate
from turnout.train.fingerprint import differences

from .conftest import REPO, ServerProcess, cli, cli_command, free_port


def numbers(cert: dict) -> str:
    tf = cert["teacher_forced"]
    return (f"{cert['a']['target']} vs {cert['b']['target']}: top1 {tf['top1_agreement']:.4f}, mean KL "
            f"{tf['mean_kl']:.3g}, rel mean |dlogit| {tf['rel_mean_abs_diff']:.3g}, max |dlogit| "
            f"{tf['max_abs_diff']:.3g}; greedy agreement {cert['greedy']['token_agreement']:.3f}; checks "
            f"{[(c['name'], c['ok']) for c in cert['checks']]}")


@pytest.fixture(scope="module")
def copies(trained_run, tmp_path_factory):
    """HF exports of the trained checkpoint: a faithful one and one with a single weight tensor perturbed."""
    root = tmp_path_factory.mktemp("copies")
    model, _, folder = load_model(trained_run)
    save_pretrained(model, root / "exported")
    with torch.no_grad():
        w = model.layers[1].attn.wq_b.weight
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)) * w.std())
    save_pretrained(model, root / "corrupted")
    for d in ("exported", "corrupted"):
        shutil.copyfile(folder / "tokenizer.json", root / d / "tokenizer.json")
    return root / "exported", root / "corrupted"


def test_cpu_vs_healthy_sim_passes_and_writes_a_certificate(trained_run, capsys):
    assert cli(["parity", "--model", str(trained_run), "--a", "cpu", "--b", "sim:healthy"]) == 0
    out = capsys.readouterr().out
    cert = json.loads((trained_run / "parity-cpu-vs-sim_healthy.json").read_text())
    assert cert["passed"] and "PASS" in out, numbers(cert)
    ident = model_identity(trained_run)
    assert cert["format"] == "turnout-parity/1" and cert["model"]["sha256"] == ident.sha256
    assert cert["model"]["trained_on"] == "cpu" and cert["precision_class"] == "fp32"
    assert cert["a"]["sha256"] == cert["b"]["sha256"] == ident.sha256
    # each side's numerics fingerprint: the same model and serving kernels, another device
    fa, fb = cert["a"]["fingerprint"], cert["b"]["fingerprint"]
    assert fa["model"] == fb["model"] and fa["kernels"] == fb["kernels"] and fa["dtype"] == "fp32"
    assert differences(fa, fb) == [f"device {fb['device']} (qualified: {fa['device']})"]
    tf, g = cert["teacher_forced"], cert["greedy"]
    assert tf["top1_agreement"] == 1.0 and tf["max_abs_diff"] == 0.0, numbers(cert)  # the sim is bit-exact
    assert g["token_agreement"] == 1.0 and g["first_divergence"] == [None] * 4
    assert cert["text"]["source"].startswith("validation split") and cert["text"]["tokens"] == 512
    assert {c["name"] for c in cert["checks"]} == {"finite", "top1_agreement", "mean_kl", "rel_mean_abs_diff"}


def test_bf16_rounded_matmuls_fail(trained_run, capsys):
    assert cli(["parity", "--model", str(trained_run), "--a", "cpu", "--b", "sim:lossy-accum"]) == 1
    assert "FAIL" in capsys.readouterr().out
    cert = json.loads((trained_run / "parity-cpu-vs-sim_lossy-accum.json").read_text())
    tf = cert["teacher_forced"]
    assert not cert["passed"], numbers(cert)
    failed = {c["name"] for c in cert["checks"] if not c["ok"]}
    # On this near-uniform model bf16 rounding keeps the argmax and a tiny KL: only the relative logit error
    # (fp32 noise ~1e-7, bf16 rounding ~5e-4, limit 5e-5) catches it.
    assert "rel_mean_abs_diff" in failed and tf["rel_mean_abs_diff"] > 5e-5, numbers(cert)


def test_a_faithful_copy_passes_and_a_corrupted_copy_fails(trained_run, copies, tmp_path):
    exported, corrupted = copies
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    assert cli(["parity", "--model", str(trained_run), "--a", "cpu", "--b", "cpu", "--model-b", str(exported),
                "--out", str(good)]) == 0
    cert = json.loads(good.read_text())
    assert cert["passed"] and cert["teacher_forced"]["rel_mean_abs_diff"] < 1e-6, numbers(cert)
    assert cert["b"]["kind"] == "hf" and cert["b"]["sha256"] != cert["a"]["sha256"]
    assert cli(["parity", "--model", str(trained_run), "--a", "cpu", "--b", "cpu", "--model-b", str(corrupted),
                "--out", str(bad)]) == 1
    cert = json.loads(bad.read_text())
    assert not cert["passed"] and cert["teacher_forced"]["rel_mean_abs_diff"] > 5e-5, numbers(cert)


def test_serving_requires_a_passing_certificate_for_these_weights(trained_run, copies, tmp_path):
    exported, corrupted = copies
    ident = model_identity(trained_run)
    assert require_certificate(ident, "cpu") is None  # the training target needs none
    if not (trained_run / "parity-cpu-vs-sim_healthy.json").exists():
        assert cli(["parity", "--model", str(trained_run), "--a", "cpu", "--b", "sim:healthy"]) == 0
    assert require_certificate(ident, "sim:healthy") == trained_run / "parity-cpu-vs-sim_healthy.json"
    with pytest.raises(CertificateError, match="no passing parity certificate.*sim:nondeterministic"):
        require_certificate(ident, "sim:nondeterministic")
    # a certificate names its weights: the corrupted copy cannot borrow the original's
    cert = trained_run / "parity-cpu-vs-sim_healthy.json"
    with pytest.raises(CertificateError, match="other weights"):
        require_certificate(model_identity(corrupted).with_trained_on("cpu"), "sim:healthy", [cert])
    with pytest.raises(CertificateError, match="--trained-on"):
        require_certificate(model_identity(exported), "sim:healthy")

    if not (trained_run / "parity-cpu-vs-sim_lossy-accum.json").exists():
        cli(["parity", "--model", str(trained_run), "--a", "cpu", "--b", "sim:lossy-accum"])
    r = subprocess.run(cli_command("serve", "--model", str(trained_run), "--target", "sim:lossy-accum",
                                   "--require-certificate", "--port", str(free_port())), cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "rel_mean_abs_diff" in r.stderr, r.stderr
    r = subprocess.run(cli_command("serve", "--model", str(exported), "--target", "sim:healthy",
                                   "--require-certificate", "--port", str(free_port())), cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "--trained-on" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    s = ServerProcess("--model", str(trained_run), "--target", "sim:healthy", "--require-certificate")
    try:
        import httpx

        h = httpx.get(s.base + "/health").json()
        assert h["target"] == "sim:healthy" and h["status"] == "ok"
        r = httpx.post(s.base + "/v1/completions", json={"model": h["model"], "prompt": "ROMEO:", "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        log = s.close()
    assert "certificate: " in log and "http://127.0.0.1:" in log


def test_hf_directory_parity_uses_the_embedded_tail_and_needs_a_trained_on_target(random_hf, tmp_path):
    hf = tmp_path / "hf"
    shutil.copytree(random_hf, hf)
    assert cli(["parity", "--model", str(hf), "--a", "cpu", "--b", "sim:healthy", "--trained-on", "cpu",
                "--sequences", "2", "--seq-len", "64", "--prompts", "2", "--new-tokens", "8"]) == 0
    cert = json.loads((hf / "parity-cpu-vs-sim_healthy.json").read_text())
    assert cert["passed"] and cert["model"]["trained_on"] == "cpu" and cert["model"]["kind"] == "hf"
    assert cert["text"]["source"] == "tail of the embedded Shakespeare corpus" and cert["text"]["tokens"] == 128
    ident = model_identity(hf).with_trained_on("cpu")
    assert require_certificate(ident, "sim:healthy") == hf / "parity-cpu-vs-sim_healthy.json"
