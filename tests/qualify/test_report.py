"""The page and qualify.json of a finished qualification: self-contained, complete, written atomically."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from tests.qualify.conftest import EAGER
from turnout.report.qualify_page import render_qualify_report as render_report
from turnout.report.qualify_page import write_qualify_report as write_report


def test_report_is_self_contained_and_shows_every_stage(qualified):
    r, out = qualified("sim:bad-backward", EAGER)
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)=["']https?:""", html) and "<script" not in html
    for name in r["stages"]:
        assert f'id="{name}"' in html
    assert "inference-only" in html and "_softmax_backward_data" in html
    svgs = re.findall(r"<svg.*?</svg>", html, flags=re.S)
    assert len(svgs) >= 6  # op errors, blocks, layer ratio, layer error, loss + band, loss gap, peaks
    for svg in svgs:
        ET.fromstring(svg)  # each chart is well-formed XML
    assert "#d62728" in svgs[0]  # the failing op is drawn red
    assert "reference band" in html and "Emulated faults" in html
    assert not list(out.glob(".report-*")) and not list(out.glob(".qualify-*"))  # no temp files left behind


def test_qualify_json_is_strict_json(qualified):
    _, out = qualified("sim:bad-backward", EAGER)
    text = (out / "qualify.json").read_text()
    json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))  # no NaN/Infinity literals


def test_report_survives_odd_evidence(tmp_path, qualified):
    r, _ = qualified("sim:bad-backward", EAGER)
    broken = json.loads(json.dumps(r))
    broken["stages"]["training"]["evidence"]["band"] = ["nan"] * 3  # shorter and unparsable
    broken["stages"]["ops"]["evidence"]["ops"][0]["forward"] = {"oops": 1}
    html = render_report(broken)
    assert "Could not draw this" in html or "<svg" in html
    assert write_report(tmp_path, r).is_file()
