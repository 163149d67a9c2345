"""The run report: built from synthetic run directories written here, checked through summarize_run and the HTML."""

import json
import math
import os
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from turnout.report.jsonl import read_jsonl
from turnout.report.run_data import summarize_run
from turnout.report.run_page import render_run_report as render_report
from turnout.report.run_page import write_run_report as write_report

T0 = 1_700_000_000.0
FLAKY_STEP_TIME, CPU_STEP_TIME = 0.9, 1.8
GEOMETRY = {"x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "r", "width", "height", "d", "points", "transform",
            "viewBox"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def _dump(path: Path, rows: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def _train(step: int, time: float, target: str, step_time: float, **extra) -> dict:
    row = {"kind": "train", "step": step, "time": time, "target": target, "loss": 5.0 - 0.05 * step,
           "ce": 4.8 - 0.05 * step, "mtp": 0.15, "balance": 0.01, "grad_norm": 1.0 + 0.01 * step,
           "grad_norm_layers": {f"layers.{i}": 0.1 * (i + 1) for i in range(3)}, "lr": 1e-3, "tokens_per_s": 1000.0,
           "mfu": 0.2, "step_time": step_time, "samples": step * 8,
           "expert_load": [[0.5, 0.25, 0.125, 0.125], [0.25, 0.25, 0.25, 0.25]], "expert_load_cv": 0.3}
    row.update(extra)
    return row


def make_failover_run(run: Path) -> Path:
    """Steps 1-24 on sim:flaky; step 25 hits an injected device_error (detected 0.2 s later); failover to cpu
    resumes from the step-20 checkpoint and runs steps 21-50; one eval before and one after; the last metrics
    line was cut short by a kill."""
    run.mkdir(parents=True, exist_ok=True)
    metrics = [_train(s, T0 + 2 + s, "sim:flaky", FLAKY_STEP_TIME) for s in range(1, 25)]
    metrics.insert(20, {"kind": "eval", "step": 20, "time": T0 + 22.5, "target": "sim:flaky", "val_loss": 4.2})
    for s in range(21, 51):
        extra = {"grad_norm": float("nan")} if s == 30 else {"lr": None} if s == 31 else {}
        metrics.append(_train(s, T0 + 30 + (s - 20) * 2.0, "cpu", CPU_STEP_TIME, **extra))
    metrics.append({"kind": "eval", "step": 50, "time": T0 + 90.5, "target": "cpu", "val_loss": 3.1})
    _dump(run / "metrics.jsonl", metrics, tail='{"kind": "train", "step": 51, "time": 17000')
    events = [
        {"step": 0, "time": T0, "kind": "start", "target": "sim:flaky", "detail": "fresh start"},
        {"step": 10, "time": T0 + 12.1, "kind": "checkpoint", "target": "sim:flaky", "detail": "step-10"},
        {"step": 20, "time": T0 + 22.2, "kind": "checkpoint", "target": "sim:flaky", "detail": "step-20"},
        {"step": 25, "time": T0 + 26.5, "kind": "injected", "fault": "device_error", "target": "sim:flaky",
         "detail": "emulated device loss"},
        {"step": 25, "time": T0 + 26.7, "kind": "device_error", "target": "sim:flaky", "detail": "RuntimeError <x>"},
        {"step": 25, "time": T0 + 28.0, "kind": "failover", "target": "cpu", "detail": "sim:flaky -> cpu",
         "to_step": 20},
        {"step": 23, "time": T0 + 36.5, "kind": "loss_check", "target": "cpu", "detail": "3 steps", "ok": True},
        {"step": 50, "time": T0 + 91.0, "kind": "end", "target": "cpu", "detail": "done"},
    ]
    _dump(run / "events.jsonl", events)
    (run / "config.toml").write_text('[train]\nlr = 1e-3\nname = "a <b> & c"\n')
    (run / "run.json").write_text(json.dumps({"name": "failover-demo", "targets": ["sim:flaky"],
                                              "fallback": ["cpu"], "params": 12_345_678, "active_params": 3_000_000}))
    for step in (10, 20):
        ck = run / "checkpoints" / f"step-{step}"
        ck.mkdir(parents=True)
        (ck / "manifest.json").write_text(json.dumps({"step": step, "time": T0 + 2 + step + 0.1}))
    return run


class _TagChecker(HTMLParser):
    """Tracks open tags; records mismatched closes so the test can assert the page is well nested."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.ids, self.svgs = [], [], [], 0

    def handle_starttag(self, tag, attrs):
        if dict(attrs).get("id"):
            self.ids.append(dict(attrs)["id"])
        if tag == "svg":
            self.svgs += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        pass  # self-closing SVG elements (<line/>, <rect/>) open nothing

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _assert_svgs_clean(page: str) -> None:
    """Every inline chart parses as XML on its own and no NaN/inf leaks into a geometry attribute."""
    chunks = page.split("<svg")[1:]
    assert chunks
    for chunk in chunks:
        root = ET.fromstring("<svg" + chunk.split("</svg>")[0] + "</svg>")
        for el in root.iter():
            for name, value in el.attrib.items():
                if name in GEOMETRY:
                    assert "nan" not in value.lower() and "inf" not in value.lower(), (name, value)


def test_failover_run_summary_numbers(tmp_path):
    run = make_failover_run(tmp_path / "run")
    s = summarize_run(run)
    assert s["name"] == "failover-demo"
    assert s["status"] == "finished"
    assert s["targets"] == ["sim:flaky", "cpu"]
    assert s["steps"] == 50
    assert s["final_loss"] == pytest.approx(5.0 - 0.05 * 50)
    assert s["final_val_loss"] == pytest.approx(3.1)
    # Wall: end event (T0 + 91) - start event (T0). Productive: surviving steps 1-20 on flaky + 21-50 on cpu;
    # the flaky lines for 21-24 were redone on cpu and no longer count.
    productive = 20 * FLAKY_STEP_TIME + 30 * CPU_STEP_TIME
    assert s["wall_time"] == pytest.approx(91.0)
    assert s["productive_time"] == pytest.approx(productive)
    assert s["ettr"] == pytest.approx(productive / 91.0)
    assert s["superseded_lines"] == 4
    assert s["steps_by_target"] == {"sim:flaky": 20, "cpu": 30}
    assert s["skipped_lines"] == 1  # the truncated last line
    assert s["checkpoints"] == [10, 20]
    (inc,) = s["incidents"]
    assert (inc["kind"], inc["step"], inc["target"]) == ("device_error", 25, "sim:flaky")
    assert inc["ttd"] == pytest.approx(0.2)
    assert inc["recovery"] == "failover"
    assert inc["ttr"] == pytest.approx((T0 + 32.0) - (T0 + 26.7))  # first cpu step after the failover
    assert inc["steps_lost"] == 5
    assert inc["loss_check_ok"] is True
    assert s["undetected_injections"] == []


def test_failover_run_html(tmp_path):
    run = make_failover_run(tmp_path / "run")
    out = write_report(run)
    assert out == run / "report.html" and out.is_file()
    assert not [p for p in run.iterdir() if p.name.startswith(".report-")]  # the temp file was renamed away
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert '<meta charset="utf-8">' in text
    assert "Could not render" not in text
    checker = _TagChecker()
    checker.feed(text)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    for sid in ("summary", "loss", "timeline", "charts", "config", "checkpoints"):
        assert sid in checker.ids
    assert checker.svgs >= 8  # loss, lr, grad norm, tokens/s, MFU, per-layer bars, expert heatmap, ...
    assert "sim:flaky" in text and "cpu" in text
    assert "0.20 s" in text  # time to detect
    row = next(r for r in text.split("<tr>")[1:] if r.startswith("<td") and "device_error" in r and "failover" in r)
    assert '<td class="num">5</td>' in row  # steps lost
    assert "RuntimeError &lt;x&gt;" in text and "<x>" not in text  # event text is escaped
    assert "a &lt;b&gt; &amp; c" in text  # so is the config
    _assert_svgs_clean(text)


def test_report_is_regenerable_and_deterministic(tmp_path):
    run = make_failover_run(tmp_path / "run")
    first = write_report(run).read_text()
    second = write_report(run).read_text()
    assert first == second


def test_empty_run_directory_says_no_data(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    s = summarize_run(run)
    assert s["steps"] == 0 and s["final_loss"] is None and s["ettr"] is None and s["incidents"] == []
    assert s["status"] == "unknown"
    text = write_report(run).read_text()
    assert "no data" in text and "Could not render" not in text
    for sid in ('id="loss"', 'id="timeline"', 'id="charts"', 'id="config"'):
        assert sid in text


def test_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "nope")
    assert summarize_run(tmp_path / "nope")["steps"] == 0  # summarising never raises


def test_odd_lines_are_tolerated(tmp_path):
    run = tmp_path / "odd"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '{"kind": "train", "step": 1, "time": 10.0, "target": "cpu", "loss": NaN, "step_time": null}\n'
        '[1, 2, 3]\n'
        'garbage\n'
        '{"kind": "train", "step": "2", "time": "11.0", "target": "cpu", "loss": "NaN", "grad_norm": -1}\n'
        '{"kind": "train", "time": 12.0, "loss": 1.0}\n'
        '{"kind": "eval", "step": 2, "time": 12.5, "val_loss": null}\n')
    (run / "events.jsonl").write_text('{"kind": "nan", "step": 2, "time": 11.5}\n{"kind": 5, "time": "x"}\n'
                                      '{"kind": "rollback", "time": 11.6, "to_step": "bad"}\n{"step": 3, "ti')
    s = summarize_run(run, now=1e12)
    assert s["steps"] == 2 and math.isnan(s["final_loss"]) and math.isnan(s["final_val_loss"])
    assert s["skipped_lines"] == 3
    assert s["status"] == "failed"  # no end event and long idle
    (inc,) = s["incidents"]
    assert inc["recovery"] == "rollback" and inc["steps_lost"] is None and inc["ttd"] is None
    text = render_report(run, now=1e12)
    assert "Could not render" not in text
    _assert_svgs_clean(text)


def test_rollback_supersedes_and_pairs_injections_once(tmp_path):
    run = tmp_path / "rb"
    run.mkdir()
    rows = [_train(s, 100.0 + s, "cpu", 1.0, loss=float(s)) for s in range(1, 11)]
    rows += [_train(s, 120.0 + s, "cpu", 1.0, loss=100.0 + s) for s in range(6, 9)]  # redone after a rollback
    _dump(run / "metrics.jsonl", rows)
    _dump(run / "events.jsonl", [
        {"step": 10, "time": 110.4, "kind": "injected", "fault": "sdc", "target": "cpu", "detail": ""},
        {"step": 10, "time": 110.5, "kind": "sdc", "target": "cpu", "detail": "mismatch"},
        {"step": 10, "time": 110.6, "kind": "rollback", "target": "cpu", "detail": "", "to_step": 5},
        {"step": 7, "time": 127.5, "kind": "sdc", "target": "cpu", "detail": "natural"},
        {"step": 7, "time": 127.6, "kind": "skip_batches", "target": "cpu", "detail": "skip 1"},
        {"step": 8, "time": 130.0, "kind": "injected", "fault": "hang", "target": "cpu", "detail": "never seen"},
    ])
    s = summarize_run(run, now=200.0)
    # Steps 6-10 of the first pass were rolled back; only 1-5 and the redone 6-8 survive.
    assert s["steps"] == 8 and s["final_loss"] == 108.0 and s["superseded_lines"] == 5
    first, second = s["incidents"]
    assert first["ttd"] == pytest.approx(0.1) and first["steps_lost"] == 5
    assert first["ttr"] == pytest.approx(126.0 - 110.5)
    assert second["ttd"] is None  # the injection was already claimed by the first detection
    assert second["recovery"] is None and [a["kind"] for a in second["actions"]] == ["skip_batches"]
    assert second["ttr"] == pytest.approx(128.0 - 127.5)
    assert [u["fault"] for u in s["undetected_injections"]] == ["hang"]
    assert s["status"] == "running"


def test_read_jsonl_skips_truncated_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{"b": NaN}\n{"c": "\xc3')
    rows, skipped = read_jsonl(p)
    assert rows[0] == {"a": 1} and math.isnan(rows[1]["b"]) and len(rows) == 2 and skipped == 1
    assert read_jsonl(tmp_path / "missing.jsonl") == ([], 0)


def test_report_file_is_readable_by_others(tmp_path):
    run = make_failover_run(tmp_path / "run")
    mode = os.stat(write_report(run)).st_mode & 0o777
    assert mode & 0o044 == 0o044


def test_restart_after_a_hang_counts_as_its_recovery_but_not_an_unrelated_one(tmp_path):
    run = tmp_path / "restart"
    run.mkdir()
    rows = [_train(s, 100.0 + s, "cpu", 1.0) for s in range(1, 26)]  # steps 1-25, then the process hangs
    rows += [_train(s, 300.0 + s, "cpu", 1.0) for s in range(21, 41)]  # a new process resumed from step 20
    _dump(run / "metrics.jsonl", rows)
    _dump(run / "events.jsonl", [
        {"step": 0, "time": 100.0, "kind": "start", "target": "cpu", "detail": ""},
        {"step": 5, "time": 105.5, "kind": "grad_spike", "target": "cpu", "detail": "x12"},
        {"step": 5, "time": 105.6, "kind": "lr_cut", "target": "cpu", "detail": "lr x0.5"},
        {"step": 25, "time": 160.0, "kind": "hang", "target": "cpu", "detail": "no step for 30 s"},
        {"step": 20, "time": 300.0, "kind": "resume", "target": "cpu", "detail": "resumed from step-20"},
        {"step": 20, "time": 300.1, "kind": "start", "target": "cpu", "detail": ""},
        {"step": 40, "time": 341.0, "kind": "stop", "target": "cpu", "detail": "stopped after 40 steps"},
    ])
    s = summarize_run(run, now=342.0)
    assert s["status"] == "stopped"
    spike, hang = s["incidents"]
    assert spike["recovery"] is None and [a["kind"] for a in spike["actions"]] == ["lr_cut"]
    assert spike["ttr"] == pytest.approx(106.0 - 105.5)
    assert hang["recovery"] == "resume" and hang["steps_lost"] == 5  # the resume event's step is where it resumed
    assert hang["ttr"] == pytest.approx(321.0 - 160.0)
    assert s["wall_time"] == pytest.approx(241.0)  # the first start to the last record: a hang's downtime is lost
    assert s["productive_time"] == pytest.approx(40.0)


def test_a_later_unrelated_restart_is_not_an_incidents_recovery(tmp_path):
    run = tmp_path / "later"
    run.mkdir()
    _dump(run / "metrics.jsonl", [_train(s, 100.0 + s, "cpu", 1.0) for s in range(1, 31)])
    _dump(run / "events.jsonl", [
        {"step": 5, "time": 105.5, "kind": "spike", "target": "cpu", "detail": "loss x3"},
        {"step": 5, "time": 105.6, "kind": "skip_batches", "target": "cpu", "detail": "skip 2"},
        {"step": 20, "time": 121.0, "kind": "resume", "target": "cpu", "detail": "next session"},
    ])
    (inc,) = summarize_run(run, now=0.0)["incidents"]
    assert inc["recovery"] is None and inc["steps_lost"] is None
    assert [a["kind"] for a in inc["actions"]] == ["skip_batches"]


def test_a_pause_the_run_chose_is_not_wall_time(tmp_path):
    """Stopped with --until, resumed a day later: goodput counts the two sessions, not the day between."""
    run = tmp_path / "paused"
    run.mkdir()
    day = 86_400.0
    rows = [_train(s, 100.0 + s, "cpu", 1.0) for s in range(1, 11)]
    rows += [_train(s, day + 100.0 + (s - 10), "cpu", 1.0) for s in range(11, 21)]
    _dump(run / "metrics.jsonl", rows)
    _dump(run / "events.jsonl", [
        {"step": 0, "time": 100.0, "kind": "start", "target": "cpu", "detail": ""},
        {"step": 10, "time": 110.5, "kind": "stop", "target": "cpu", "detail": "stopped after 10 steps"},
        {"step": 10, "time": day + 99.0, "kind": "resume", "target": "cpu", "detail": "resumed from step-10"},
        {"step": 10, "time": day + 99.5, "kind": "start", "target": "cpu", "detail": ""},
        {"step": 20, "time": day + 110.5, "kind": "end", "target": "cpu", "detail": "finished"},
    ])
    s = summarize_run(run)
    assert s["wall_time"] == pytest.approx(10.5 + 11.5)
    assert s["productive_time"] == pytest.approx(20.0)
    assert s["ettr"] == pytest.approx(20.0 / 22.0)
