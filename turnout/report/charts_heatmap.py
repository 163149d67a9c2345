"""Heatmaps: a rows x cols grid of values on a sequential scale (e.g. expert load per MoE layer).

The grid is one embedded raster image (a 58 x 256 grid would otherwise be 15k SVG paths) under text labels
and a labelled colour bar. Cells print their value when they are big enough to hold it; ragged or short rows
are padded with NaN, drawn light grey as "no data". Rows get at least 14 px each (6 px past 60 rows, with
thinned labels), the chart growing taller than `height` as needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from turnout.report.charts_render import FONT_PT, as_list, chart, floats, placeholder, text_px
from turnout.report.values import as_float

NAN_FILL = "#e8e8e8"
CHROME_PX = 110  # title, column labels, x label and padding around the grid
MAX_CELL_TEXT = 1500  # past this many cells the numbers are noise (and weight); the colours carry it


def heatmap(rows: Sequence[str], cols: Sequence[str], values: Sequence[Sequence[float]], *, title: str,
            fmt: str | Callable[[float], str] = ".2f", x_label: str = "", y_label: str = "",
            vmin: float | None = None, vmax: float | None = None, value_label: str = "value",
            width: int = 720, height: int = 260) -> str:
    """An inline-SVG heatmap, one row per `rows` label and one column per `cols` label; values[r][c] fills a
    cell on the "Blues" scale from vmin to vmax (default: the data's range).

    `fmt` (a format spec or a callable; a bad one falls back to 4 digits) formats cell text and colour-bar
    ticks; `value_label` names the colour bar. Non-numbers, short rows and missing rows are "no data".
    """
    row_names, col_names = [str(r) for r in as_list(rows)], [str(c) for c in as_list(cols)]
    n_rows, n_cols = len(row_names), len(col_names)
    grid = np.full((n_rows, n_cols), np.nan)
    for r, line in enumerate(as_list(values)[:n_rows]):
        row = floats(line)[:n_cols]
        grid[r, : row.size] = row
    if not np.isfinite(grid).any():
        return placeholder(title, "no data", width)
    given = ((vmin, np.nanmin), (vmax, np.nanmax))  # vmin..vmax where finite, else the data's range
    lo, hi = sorted(f if math.isfinite(f := as_float(v)) else float(d(grid)) for v, d in given)
    pad = 0.0 if hi > lo else abs(lo) * 0.1 or 1.0  # never a zero-width scale
    lo, hi = float(lo - pad), float(hi + pad)

    def fmt_v(v: float) -> str:
        try:
            return str(fmt(v)) if callable(fmt) else format(v, fmt)
        except (TypeError, ValueError):
            return f"{v:.4g}"

    row_px = max(min(28.0, (height - CHROME_PX) / n_rows), 14.0 if n_rows <= 60 else 6.0)
    key = [x_label, y_label, value_label, *row_names, "\0", *col_names, grid, lo, hi]
    with chart("heatmap", title, width, max(height, CHROME_PX + n_rows * row_px), *key) as c:
        ax = c.fig.add_subplot(xlabel=x_label, ylabel=y_label)
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=mpl.colormaps["Blues"].with_extremes(bad=NAN_FILL),
                       vmin=lo, vmax=hi, aspect="auto", interpolation="nearest")
        # A colour bar the full height of a tall grid is hard to read against; ~300 px is plenty.
        bar = c.fig.colorbar(im, ax=ax, label=value_label, pad=0.02, fraction=0.05,
                             shrink=min(1.0, 300 / (n_rows * row_px)))
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_v(v)))
        bar.outline.set_linewidth(0.5)
        ax.grid(False)
        ax.spines[:].set_visible(False)
        ax.tick_params(which="both", length=0)
        c.title()
        c.legend(ax, [(Patch(facecolor=NAN_FILL), "no data")] if np.isnan(grid).any() else [])
        # Ticks and cell text depend on the cell size, known once the layout has run.
        c.fig.draw_without_rendering()
        box = ax.get_position()  # figure fractions: the canvas' own dpi (72 for SVG) does not matter
        cell_w, cell_h = box.width * c.width / n_cols, box.height * c.height / n_rows
        every = max(1, math.ceil(12 / cell_h))
        ax.set_yticks(range(0, n_rows, every), row_names[::every])
        slant = max(text_px(s) for s in col_names) + 6 > cell_w  # slanted labels need ~17 px of column each
        every = max(1, math.ceil(17 / cell_w)) if slant else 1
        ax.set_xticks(range(0, n_cols, every), col_names[::every], rotation=45 if slant else 0,
                      ha="right" if slant else "center", rotation_mode="anchor")
        if cell_w >= 6 and cell_h >= 6:  # white borders only where they do not swamp the colour
            ax.set_xticks(np.arange(n_cols + 1) - 0.5, minor=True)
            ax.set_yticks(np.arange(n_rows + 1) - 0.5, minor=True)
            ax.grid(which="minor", color="white", linewidth=0.6)
            ax.set_axisbelow(False)
        cells = ([(r, k, fmt_v(v)) for (r, k), v in np.ndenumerate(grid) if math.isfinite(v)]
                 if grid.size <= MAX_CELL_TEXT and cell_h >= 12 else [])
        if cells and max(text_px(t, FONT_PT - 1) for *_, t in cells) + 4 <= cell_w:
            for r, k, text in cells:  # white text on the darker half of the scale
                ax.text(k, r, text, ha="center", va="center", fontsize=FONT_PT - 1,
                        color="white" if (grid[r, k] - lo) / (hi - lo) > 0.55 else "#222222")
        return c.svg()
