"""Report charts: valid, deterministic, embeddable SVG that keeps text literal and stays calm about bad input."""

import functools
import math
import re
import xml.etree.ElementTree as ET

import matplotlib as mpl
import numpy as np
import pytest

from turnout.report.charts import (Band, Envelope, LaneEvent, Marker, Series, bar_chart, event_timeline, heatmap,
                                   line_chart)
from turnout.report.charts_render import floats, palette_for, thin, tick_label

NS = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}href"
STEPS = list(range(1, 301))
LOSS = [4 * math.exp(-s / 80) + 2 for s in STEPS]
LONG_LABELS = [f"model.layers.{i}.mlp.experts.down_proj.weight" for i in range(60)]


def _parse(svg: str) -> ET.Element:
    assert not svg.startswith("<?xml") and "<!DOCTYPE" not in svg
    root = ET.fromstring(svg)
    assert root.tag == NS + "svg"
    return root


def _texts(root: ET.Element) -> list[str]:
    return [el.text or "" for el in root.iter(NS + "text")]


# Each chart kind once, drawn lazily and shared by the tests that only read it (drawing is the slow part).
CHARTS = {
    "line": lambda: line_chart(
        [Series("train loss", STEPS, LOSS), Series("held-out", STEPS[::25], LOSS[::25], dots=True)],
        title="Loss", x_label="step", y_label="loss",
        markers=[Marker(100, "device_error"), Marker(100, "injected", "#7f7f7f", "dashed", detail="bitflip"),
                 Marker(200, "device_error")],
        bands=[Band(1, 150, "sim:flaky"), Band(150, 300, "cpu", "#dcfce7"), Band(290, 300, "cpu", "#dcfce7")],
        envelopes=[Envelope([1, 300], [5, 1.5], [6, 2.5], name="reference")]),
    "line_log": lambda: line_chart([Series("grad norm", [1, 2, 3, 4, 5], [1.0, 0.0, -2.0, 0.5, 0.2])],
                                   title="Gradient norm", x_label="step", y_label="grad norm", log_y=True),
    "bar": lambda: bar_chart(["add", "matmul", "softmax"], [0.1, math.nan, 0.4], title="Per-op error",
                             y_label="max |err|", threshold=0.3, threshold_label="tolerance",
                             colors=[None, None, "#d62728"]),
    "bar_many": lambda: bar_chart(LONG_LABELS, [10 ** -(i % 5) for i in range(60)], title="Grad norm per layer",
                                  y_label="grad norm", log_y=True),
    "heatmap": lambda: heatmap(["layer 0", "layer 1", "layer 2"], ["e0", "e1", "e2"],
                               [[0.1, 0.2, 0.3], [0.4], None], title="Expert load", x_label="expert",
                               y_label="MoE layer", vmin=0.0),
    "timeline": lambda: event_timeline(
        [Series("train loss", STEPS, LOSS)], lanes=["sim:flaky", "cpu"], title="Run timeline",
        events=[LaneEvent(100, "sim:flaky", "injected", "#7f7f7f", "v"),
                LaneEvent(100, "sim:flaky", "device_error", "#d62728", "X", "lost device", line=True),
                LaneEvent(100, "sim:flaky", "rollback", "#1f77b4"),
                LaneEvent(150, "cpu", "failover", "#2ca02c", "s", line=True),
                LaneEvent(220, "cuda:0", "device_error", "#d62728", "X")],
        bands=[Band(1, 150, "sim:flaky"), Band(150, 300, "cpu", "#dcfce7")]),
}
AXIS_LABELS = {"line": ("step", "loss"), "line_log": ("step", "grad norm"), "bar": ("max |err|",),
               "bar_many": ("grad norm",), "heatmap": ("expert", "MoE layer"), "timeline": ("step", "loss")}


@functools.cache
def chart(kind: str) -> str:
    return CHARTS[kind]()


@pytest.mark.parametrize("kind", sorted(CHARTS))
def test_every_chart_is_inline_svg_with_its_title_and_axis_labels(kind):
    root = _parse(chart(kind))
    texts = _texts(root)
    assert root.get("width").isdigit() and root.get("height").isdigit()  # CSS pixels, not points
    assert any(t.startswith(root.get("aria-label")) for t in texts)
    for label in AXIS_LABELS[kind]:
        assert label in texts, f"{kind}: axis label {label!r} missing"


@pytest.mark.parametrize("kind", ["line", "bar", "heatmap", "timeline"])
def test_same_input_gives_the_same_string(kind):
    assert CHARTS[kind]() == chart(kind)


def test_charts_on_one_page_have_unique_ids_and_resolve_their_references():
    # Same kind and title, different data: the ids must still differ.
    other = line_chart([Series("train loss", STEPS, [v + 1 for v in LOSS])], title="Loss", x_label="step",
                       y_label="loss")
    ids = []
    for svg in (chart("line"), other, chart("bar"), chart("heatmap"), chart("timeline")):
        root = _parse(svg)
        own = [el.get("id") for el in root.iter() if el.get("id")]
        refs = re.findall(r'url\(#([^)]+)\)', svg) + [el.get(XLINK)[1:] for el in root.iter()
                                                       if (el.get(XLINK) or "").startswith("#")]
        assert set(refs) <= set(own)
        ids += own
    assert len(ids) == len(set(ids))


def test_text_is_escaped_and_printed_literally():
    name = 'a<&>"b $x_1$'
    title = 'cost in $ for a_b \\1 "q"'
    svg = line_chart([Series(name, [1, 2], [1.0, 2.0])], title=title, x_label="$step",
                     y_label="loss_$\x07", markers=[Marker(1, "<marker>")])
    root = _parse(svg)  # the control character, illegal in XML, is dropped rather than voiding the SVG
    texts = _texts(root)
    for s in (name, title, "$step", "loss_$", "<marker>"):
        assert s in texts
    assert root.get("aria-label") == title


def test_long_titles_wrap_without_losing_words():
    title = " ".join(f"word{i}" for i in range(40))
    root = _parse(line_chart([Series("a", [1, 2], [1.0, 2.0])], title=title, x_label="x", y_label="y", width=400))
    heading = [t for t in _texts(root) if "word" in t]
    assert len(heading) > 1 and " ".join(heading).split() == title.split()


def test_markers_are_bare_lines_with_one_legend_entry_per_label():
    texts = _texts(_parse(chart("line")))
    assert texts.count("device_error") == 1 and texts.count("injected") == 1  # legend only, not on the plot
    assert texts.count("cpu") == 1  # one entry per band label


def test_nan_inf_and_none_leave_gaps_not_nan_coordinates():
    ys = [3.0, float("nan"), 2.5, None, "NaN", 2.0, float("inf"), 1.8, "x", 1.7]
    root = _parse(line_chart([Series("loss", list(range(10)), ys)], title="Gaps", x_label="step", y_label="loss"))
    attrs = " ".join(v for el in root.iter() for k, v in el.attrib.items() if k != "aria-label")
    assert "nan" not in attrs.lower() and "inf" not in attrs.lower()
    assert max(p.get("d").count("M") for p in root.iter(NS + "path")) >= 3  # the line restarts after each gap


def test_log_axis_leaves_out_non_positive_values_with_a_note():
    assert "2 non-positive value(s) not shown (log scale)" in _texts(_parse(chart("line_log")))
    bars = bar_chart(["a", "b"], [1.0, 0.0], title="Bars", y_label="v", log_y=True)
    assert "1 non-positive value(s) not shown (log scale)" in _texts(_parse(bars))


@pytest.mark.parametrize("make, why", [
    (lambda: line_chart([], title="Empty"), "no data"),
    (lambda: line_chart([Series("a", [1, 2], [None, math.nan])], title="Empty"), "no data"),
    (lambda: line_chart([Series("a", [1, 2], [0, -1])], title="Empty", log_y=True),
     "no positive values to plot on a log scale"),
    (lambda: bar_chart([], [], title="Empty"), "no data"),
    (lambda: heatmap(["r"], ["c"], [["x"]], title="Empty"), "no data"),
    (lambda: event_timeline([], lanes=["cpu"], events=[], title="Empty"), "no data"),
])
def test_nothing_plottable_gives_a_small_placeholder_saying_why(make, why):
    root = _parse(make())
    assert "Empty" in _texts(root) and why in _texts(root)
    assert int(root.get("height")) <= 120


def test_long_series_stays_small_and_keeps_its_spike():
    assert len(chart("line")) < 150_000  # a 300-step loss chart with bands, markers and an envelope
    xs = np.arange(100_000)
    ys = np.exp(-xs / 30_000) + 0.01 * np.sin(xs)
    ys[54_321] = 50.0
    svg = line_chart([Series("loss", xs, ys)], title="Long", x_label="step", y_label="loss")
    assert len(svg) < 200_000
    keep = thin(xs.astype(float), [ys], 0, 99_999, 720)
    assert 54_321 in keep and len(keep) <= 2 * 720 + 2


def test_thinning_keeps_gaps():
    ys = np.sin(np.arange(10_000) / 50)
    ys[5_000:5_010] = np.nan
    keep = thin(np.arange(10_000.0), [ys], 0, 9_999, 100)
    assert np.isnan(ys[keep]).sum() == 1


def test_many_long_bar_labels_turn_horizontal_and_print_in_full():
    root = _parse(chart("bar_many"))
    texts = _texts(root)
    for label in LONG_LABELS:
        assert label in texts
    assert int(root.get("height")) > 60 * 14  # a readable row per label
    angles = {re.search(r"rotate\((-?[\d.]+)", el.get("transform", "rotate(0")).group(1)
              for el in root.iter(NS + "text") if el.text in LONG_LABELS}
    assert {float(a) for a in angles} == {0.0}


def test_bar_chart_marks_missing_values_and_names_the_threshold():
    svg = chart("bar")
    assert {"tolerance (0.3)", "no value", "add", "matmul", "softmax"} <= set(_texts(_parse(svg)))
    assert "#777777" in svg and "#d62728" in svg  # the grey 'x' of the missing value; the requested colour


def test_heatmap_pads_ragged_rows_and_prints_cell_values():
    root = _parse(chart("heatmap"))
    texts = _texts(root)
    assert {"0.10", "0.30", "0.40", "no data", "value"} <= set(texts)
    assert not any("nan" in t.lower() for t in texts)  # padding cells print nothing
    assert root.find(f".//{NS}image") is not None


def test_timeline_has_a_row_per_lane_plus_unknown_lanes_and_keeps_stacked_events_apart():
    root = _parse(chart("timeline"))
    texts = _texts(root)
    for lane in ("sim:flaky", "cpu", "cuda:0"):
        assert lane in texts
    assert texts.count("device_error") == 1  # one legend entry per kind
    spots = {(u.get("x"), u.get("y")) for u in root.iter(NS + "use") if "fill" in u.get("style", "")}  # not ticks
    assert len(spots) == 5 + 4  # five events (three stacked at step 100) and a legend symbol per kind


def test_bad_input_does_not_raise():
    svg = line_chart([Series("a", None, "abc"), Series("b", [1, 2, 3], [1, 2], color="not-a-colour")],
                     title="Odd", x_label="x", y_label="y", markers=[Marker(None, "m"), Marker(2, "n", "??", "wavy")],
                     bands=[Band(None, 2, "b")], envelopes=[Envelope([1, 2], [None, 1], [2, 2])])
    _parse(svg)
    _parse(bar_chart(["a", "b"], ["1", object()], title="Odd", colors=["#zzz"]))
    _parse(heatmap(["a", "b"], ["c"], [[1], [2]], title="Odd", fmt="%%bad"))
    _parse(event_timeline([], lanes=[], events=[LaneEvent(1, "x", "k", "nope", symbol="??")], title="Odd"))


def test_rc_settings_do_not_leak():
    before = dict(mpl.rcParams)
    chart("line")
    line_chart([Series("a", [1, 2], [1, 2])], title="Leak", x_label="x", y_label="y")
    assert dict(mpl.rcParams) == before


def test_tick_labels_are_plain_text():
    assert [tick_label(v, 200_000) for v in (0, 50_000, 1_500_000)] == ["0", "50k", "1.5M"]
    assert [tick_label(v, 3e-4) for v in (1e-4, 2.5e-4)] == ["1e-4", "2.5e-4"]
    assert tick_label(0.25, 1) == "0.25"


def test_palette_gives_distinct_colours_and_keeps_requested_ones():
    assert len(set(palette_for([None] * 12))) == 12
    got = palette_for(["#1f77b4", None, "bogus"])
    assert got[0] == "#1f77b4" and "#1f77b4" not in got[1:] and len(set(got)) == 3


def test_floats_turns_non_numbers_into_nan():
    got = floats([1, None, "2.5", "x", float("inf"), True])
    assert np.isnan(got[[1, 3, 4]]).all() and got[0] == 1 and got[2] == 2.5
