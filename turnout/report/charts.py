"""Report charts drawn by matplotlib, returned as inline SVG strings for HTML pages.

    svg = line_chart([Series("train loss", steps, losses)], title="Loss", x_label="step", y_label="loss",
                     markers=[Marker(25, "device_error")], bands=[Band(1, 24, "sim:flaky")])

Every chart is a self-contained <svg> (no XML declaration, no scripts, no external fonts) sized in CSS
pixels by `width`/`height`, with text kept as text and `$`/`_` printed literally. Output is deterministic
(same input, same string), and ids are salted per chart so many charts can share one page. Legends sit
above the plot; event markers are unlabelled vertical lines named in the legend.
Bad input never raises: None/NaN/inf values leave gaps, non-positive values are left out of a log axis
with a note in the legend, and a chart with nothing to draw is a placeholder that says why.

The pieces: `charts_lines` (line charts and the run report's event lanes over the loss), `charts_bar`,
`charts_heatmap`, with `charts_render` (figure to SVG, ticks, palette, legends, input cleaning, decimation)
under them. Charts are drawn under matplotlib's process-global rcParams, so draw them from one thread.
"""

from turnout.report.charts_bar import bar_chart
from turnout.report.charts_heatmap import heatmap
from turnout.report.charts_lines import Band, Envelope, LaneEvent, Marker, Series, event_timeline, line_chart
from turnout.report.charts_render import placeholder

__all__ = ["Band", "Envelope", "LaneEvent", "Marker", "Series", "bar_chart", "event_timeline", "heatmap",
           "line_chart", "placeholder"]
