"""The look shared by every ufm figure: series colours (Okabe–Ito without black, grey and yellow), line styles and
markers so that overlapping curves stay distinguishable, the neutral overlay colour, the colour map, and the
round-off threshold of the phase maps."""

from __future__ import annotations

COLORS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00"]
LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
NEUTRAL = "#595959"          # overlays only (ideal ETF, reference lines): never a series colour
CMAP = "cividis"
#: a relative value at or below this is machine precision: a phase map shows it as "collapsed to round-off"
ROUNDOFF = 1e-12


def series_style(i: int) -> dict:
    """Colour, line style and marker of series ``i``: every series differs from the others in all three (the triple
    repeats after 24 series), so curves that lie on each other stay distinguishable."""
    return {"color": COLORS[i % len(COLORS)], "ls": LINESTYLES[i % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)]}


def class_style(k: int) -> dict:
    """Colour and marker of class ``k``: colours first, then markers, so the first 48 classes all differ."""
    return {"color": COLORS[k % len(COLORS)], "marker": MARKERS[(k // len(COLORS)) % len(MARKERS)]}
