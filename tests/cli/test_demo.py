"""The demo end to end, shortened (debug preset, fewer steps), and its HTML pages rendered in headless Chromium."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SHORT = ["--set", "model.preset='debug'", "--set", "train.seq_len=32", "--set", "train.steps=130",
         "--set", "train.eval_interval=65"]


def _chromium() -> str | None:
    """Debian's chromium, installed on first use when missing (the project's own test setup)."""
    exe = shutil.which("chromium")
    if exe:
        return exe
    try:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=900,
                       env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    except (OSError, subprocess.SubprocessError):
        return None
    return shutil.which("chromium")


def _render(chromium: str, page: Path, tmp: Path) -> str:
    """The DOM of `page` after Chromium loaded and laid it out."""
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp / 'chromium-profile'}", "--dump-dom", page.resolve().as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]
    return r.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    r = subprocess.run([sys.executable, "-m", "turnout", "demo", "--out", str(out), *SHORT], capture_output=True,
                       text=True, timeout=1500)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return out, r.stdout


def test_demo_tells_the_story(demo):
    out, stdout = demo
    for stage in ("1/5 targets", "2/5 qualify", "3/5 train", "4/5 export", "5/5 the report"):
        assert stage in stdout
    story = json.loads((out / "story.json").read_text())
    assert story["qualify"]["sim:flaky"]["verdict"] == "inference-only"  # it serves below, as qualified to
    assert story["qualify"]["cpu"]["verdict"] == "train-ready"
    events = [json.loads(x) for x in (out / "run" / "events.jsonl").read_text().splitlines()]
    fo = [e for e in events if e["kind"] == "failover"]
    assert fo and fo[0]["from_target"] == "sim:flaky" and fo[0]["to_target"] == "cpu"
    assert [e for e in events if e["kind"] == "end"][-1]["target"] == "cpu"
    assert story["certificate"] and len(story["completions"]) == 3
    assert (out / "hf" / "config.json").is_file() and "report: " in stdout


def _screenshot(chromium: str, page: Path, png: Path) -> np.ndarray:
    """A full-width screenshot of `page` as an RGB(A) array."""
    import matplotlib.image

    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--no-first-run", f"--user-data-dir={png.parent / 'chromium-profile'}",
                        "--window-size=1100,2400", f"--screenshot={png}", page.resolve().as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and png.is_file(), r.stderr[-1000:]
    return matplotlib.image.imread(png)


def test_reports_render_in_chromium(demo, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed and could not be installed (apt-get failed)")
    out, _ = demo
    pages = {"index": (out / "index.html", 1), "run": (out / "run" / "report.html", 8),
             "qualify": (out / "qualify-sim-flaky" / "report.html", 5)}
    dom = {}
    for name, (page, charts) in pages.items():
        dom[name] = _render(chromium, page, tmp_path)
        assert dom[name].count('class="turnout-chart"') >= charts, name  # each chart made it into the DOM
        assert "Could not render" not in dom[name] and "Could not draw" not in dom[name], name
        shot = _screenshot(chromium, page, tmp_path / f"{name}.png")
        # A page that laid out its charts has far more than a handful of colours in its first screen.
        colours = len({tuple(px) for px in (shot[::7, ::7, :3] * 255).astype(int).reshape(-1, 3).tolist()})
        assert colours > 40, (name, colours)
    for sid in ("qualify", "run", "parity", "serve"):
        assert f'id="{sid}"' in dom["index"]
    assert dom["index"].count("<table") >= 4 and "PASS" in dom["index"]
    assert 'id="timeline"' in dom["run"] and "failover" in dom["run"]
    assert "<table" in dom["qualify"]
