"""Inline-SVG charts: well-formed, deterministic, escaped, and calm about NaN, empty and non-positive input."""

import math
import re
import xml.etree.ElementTree as ET

import pytest

from turnout.train.plots import Band, Envelope, Marker, Series, bar_chart, heatmap, line_chart
from turnout.train.plots_svg import linear_ticks, log_ticks

NS = "{http://www.w3.org/2000/svg}"
GEOMETRY = ("x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "r", "width", "height", "d", "points", "transform")


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == NS + "svg"
    return root


def _texts(root: ET.Element) -> list[str]:
    return [el.text or "" for el in root.iter() if el.tag in (NS + "text", NS + "title")]


def _geometry(root: ET.Element) -> str:
    return " ".join(v for el in root.iter() for k, v in el.attrib.items() if k in GEOMETRY)


def _line(**kw) -> str:
    args = dict(title="Loss", x_label="step", y_label="loss")
    args.update(kw)
    return line_chart(args.pop("series", [Series("train", [1, 2, 3], [3.0, 2.0, 1.5])]), **args)


def test_line_chart_is_valid_svg_with_names_and_labels():
    svg = _line(series=[Series("train loss", [1, 2, 3, 4], [4.0, 3.0, 2.5, 2.2]),
                        Series("held-out", [2, 4], [3.2, 2.4], dashed=True, dots=True)],
                markers=[Marker(3, "device_error", "#d62728", detail="lost device"),
                         Marker(2.8, "injected", "#7f7f7f", "dashed")],
                bands=[Band(1, 2.5, "sim:flaky", "#dbeafe"), Band(2.5, 4, "cpu", "#dcfce7")],
                envelopes=[Envelope([1, 4], [3.5, 2.0], [4.5, 2.6], name="reference \u00b1 tol")])
    root = _parse(svg)
    texts = " ".join(_texts(root))
    for s in ("Loss", "train loss", "held-out", "step", "loss", "sim:flaky", "cpu", "device_error",
              "reference \u00b1 tol", "lost device"):
        assert s in texts
    assert 'stroke-dasharray="6 4"' in svg  # dashed series / dashed marker
    assert len(root.findall(f".//{NS}polygon")) == 1  # the envelope
    assert len(root.findall(f".//{NS}circle")) == 2  # dots on the sparse series


def test_envelope_may_be_passed_as_a_band():
    svg = _line(bands=[Envelope([1, 3], [1, 1], [2, 2], "#abc", "tol")])
    assert len(_parse(svg).findall(f".//{NS}polygon")) == 1


def test_nan_and_inf_make_gaps_not_nan_coordinates():
    ys = [3.0, float("nan"), 2.5, None, "NaN", 2.0, float("inf"), 1.8, 1.7]
    root = _parse(_line(series=[Series("loss", list(range(1, 10)), ys)]))
    geometry = _geometry(root).lower()
    assert "nan" not in geometry and "inf" not in geometry
    paths = [p.get("d") for p in root.iter(NS + "path")]
    assert len(paths) == 1 and paths[0].count("M") == 1  # only the 1.8, 1.7 run is two points long ...
    assert len(root.findall(f".//{NS}circle")) == 3  # ... the lone points 3.0, 2.5, 2.0 become dots


def test_log_scale_skips_non_positive_values_with_a_note():
    svg = _line(series=[Series("grad norm", [1, 2, 3, 4], [1.0, 0.0, -2.0, 10.0])], log_y=True)
    root = _parse(svg)
    assert "2 non-positive value(s) not shown" in " ".join(_texts(root))
    assert "nan" not in _geometry(root).lower()


def test_log_scale_with_nothing_positive_is_a_placeholder():
    svg = _line(series=[Series("grad norm", [1, 2], [0.0, -1.0])], log_y=True)
    assert "no positive values to plot on a log scale" in " ".join(_texts(_parse(svg)))
    assert "<path" not in svg


@pytest.mark.parametrize("series", [[], [Series("x", [], [])], [Series("x", [1, 2], [math.nan, None])]])
def test_empty_series_give_a_placeholder(series):
    root = _parse(_line(series=series))
    assert "no data" in _texts(root) and "Loss" in _texts(root)


def test_output_is_deterministic():
    def build():
        return (_line(series=[Series("a", [1, 2, 3], [0.1, 0.2, 0.15]), Series("b", [1, 3], [0.3, 0.05])],
                      markers=[Marker(2, "spike")], bands=[Band(1, 3, "cpu")])
                + bar_chart(["x", "y"], [1, 2], title="t") + heatmap(["r"], ["c1", "c2"], [[0.1, 0.9]], title="h"))
    assert build() == build()


def test_text_is_escaped():
    svg = _line(title="a <b> & c", series=[Series("<script>", [1, 2], [1, 2])], x_label='x "q"',
                markers=[Marker(1, "<m>")], bands=[Band(1, 2, "<band>")])
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "<m>" not in svg and "<band>" not in svg
    texts = _texts(_parse(svg))
    assert "a <b> & c" in texts and "<script>" in texts
    bars = bar_chart(["<op>", "b&c"], [1, 2], title="<t>", y_label="<y>")
    assert "<op>" in _texts(_parse(bars))
    hm = heatmap(["<row>"], ["<col>"], [[1.0]], title="<h>")
    assert "<row>" in _texts(_parse(hm))


def test_control_characters_do_not_break_xml():
    _parse(_line(title="bad\x00\x1bchars", series=[Series("s\x07", [1, 2], [1, 2])]))


def test_long_series_are_thinned_but_keep_spikes():
    n = 100_000
    ys = [1.0] * n
    ys[54_321] = 50.0
    svg = _line(series=[Series("loss", list(range(n)), ys)])
    assert len(svg) < 150_000
    root = _parse(svg)
    ys = [float(y) for p in root.iter(NS + "path") for y in re.findall(r",([\d.]+)", p.get("d"))]
    assert max(ys) - min(ys) > 100  # the one-point spike survived the thinning


def test_bar_chart_with_threshold_colours_and_many_labels():
    labels = [f"aten::op_{i}" for i in range(60)]
    values = [10.0 ** (-i / 10) for i in range(60)]
    colors = ["#d62728" if v > 1e-3 else None for v in values]
    svg = bar_chart(labels, values, title="Per-op error", y_label="max rel err", log_y=True, threshold=1e-3,
                    threshold_label="tolerance", colors=colors)
    root = _parse(svg)
    texts = _texts(root)
    assert "Per-op error" in texts and "tolerance 0.001" in texts
    assert 'stroke-dasharray="6 4"' in svg and "rotate(-50" in svg  # threshold line; rotated labels
    titles = [t for t in texts if t.startswith("aten::op_") and ": " in t]
    assert len(titles) == 60  # every bar has a tooltip even where its label was thinned out
    fills = [r.get("fill") for r in root.iter(NS + "rect")]
    assert fills.count("#d62728") == 30


def test_horizontal_bar_chart_grows_to_fit_rows():
    svg = bar_chart([f"layers.{i}" for i in range(40)], [float(i) - 3 for i in range(40)], title="grad norm",
                    horizontal=True, threshold=5)
    root = _parse(svg)
    assert int(root.get("height")) >= 40 * 14
    assert "layers.39" in _texts(root)


def test_bar_chart_nan_and_log_non_positive_values():
    root = _parse(bar_chart(["a", "b", "c"], [1.0, float("nan"), -1.0], title="t", log_y=True))
    texts = _texts(root)
    assert "a: 1" in texts and "b: NaN" in texts and "c: -1" in texts
    assert "nan" not in _geometry(root).lower()
    assert "no data" in _texts(_parse(bar_chart([], [], title="t")))
    assert "no data" in _texts(_parse(bar_chart(["a"], [None], title="t")))


def test_heatmap_cells_tooltips_and_ragged_input():
    svg = heatmap(["MoE layer 0", "MoE layer 1"], ["e0", "e1", "e2"], [[0.5, 0.25, 0.25], [0.9]],
                  title="Expert load", fmt=".2f")
    texts = _texts(_parse(svg))
    assert "MoE layer 0 / e1: 0.25" in texts and "MoE layer 1 / e2: no data" in texts
    assert "0.50" in texts  # wide cells carry their value
    assert "no data" in _texts(_parse(heatmap([], [], [], title="h")))
    wide = heatmap([f"L{i}" for i in range(4)], [f"e{j}" for j in range(256)], [[1.0] * 256] * 4, title="h")
    _parse(wide)


def test_heatmap_bad_format_falls_back():
    texts = _texts(_parse(heatmap(["r"], ["c"], [[0.123456]], title="h", fmt="not a spec")))
    assert "r / c: 0.1235" in texts


def test_nice_ticks():
    lo, hi, values, labels = linear_ticks(1, 50)
    assert (lo, hi) == (0, 50) and labels == ["0", "10", "20", "30", "40", "50"]
    assert linear_ticks(0, 1)[3] == ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert linear_ticks(0, 125_000)[3] == ["0", "50k", "100k", "150k"]
    assert linear_ticks(3, 3)[0] < 3 < linear_ticks(3, 3)[1]  # a constant still gets an axis
    assert linear_ticks(1, 3, integer=True)[3] == ["1", "2", "3"]
    assert log_ticks(1e-3, 1e3)[3] == ["0.001", "0.01", "0.1", "1", "10", "100", "1000"]
    assert len(log_ticks(1.0, 1.5)[2]) >= 3  # under a decade the ticks are evenly stepped
