"""Line charts as SVG text, drawn on the server: no JavaScript library, nothing loaded from
elsewhere, and no inline style (the console's Content-Security-Policy allows none), only
presentation attributes. Every text that comes from data (team names) is escaped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["PALETTE", "line_chart"]

#: one colour per series, in order (then again)
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")

_WIDTH = 640
_HEIGHT = 200
_LEFT = 56
_RIGHT = 150
_TOP = 24
_BOTTOM = 28


def _number(value: float) -> str:
    """A short label: 1.5k, 12, 0.25."""
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    if value >= 10 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2f}"


def line_chart(
    title: str,
    unit: str,
    series: Mapping[str, Sequence[float | None]],
    *,
    seconds_per_point: float,
    totals: Mapping[str, str] | None = None,
) -> str:
    """An SVG document: one polyline per series (``None`` points are gaps), oldest point on
    the left, the newest at the right edge; a legend naming each series with its entry in
    ``totals`` (or its last value). Each polyline has ``data-series`` and ``data-last``."""
    points = max((len(values) for values in series.values()), default=0)
    top = max((v for values in series.values() for v in values if v is not None), default=0.0)
    top = top * 1.1 if top > 0 else 1.0
    plot_w = _WIDTH - _LEFT - _RIGHT
    plot_h = _HEIGHT - _TOP - _BOTTOM
    step = plot_w / max(points - 1, 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {_WIDTH} '
        f'{_HEIGHT}" width="{_WIDTH}" height="{_HEIGHT}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="{_LEFT}" y="16" font-size="13" font-weight="bold" fill="#111">'
        f"{escape(title)} ({escape(unit)})</text>",
    ]
    for i in range(3):  # grid lines and y labels: 0, half, top
        tick = top * i / 2
        y = _TOP + plot_h - plot_h * i / 2
        out.append(
            f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + plot_w}" y2="{y:.1f}" '
            'stroke="#ddd" stroke-width="1"/>'
        )
        out.append(
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" '
            f'fill="#555">{escape(_number(tick))}</text>'
        )
    minutes = points * seconds_per_point / 60
    seconds = points * seconds_per_point
    label = f"last {minutes:.0f} min" if minutes >= 1 else f"last {seconds:.0f} s"
    out.append(
        f'<text x="{_LEFT}" y="{_HEIGHT - 8}" font-size="11" fill="#555">{escape(label)}</text>'
    )
    out.append(
        f'<text x="{_LEFT + plot_w}" y="{_HEIGHT - 8}" font-size="11" text-anchor="end" '
        'fill="#555">now</text>'
    )
    for n, (name, values) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)]
        offset = points - len(values)
        runs: list[list[str]] = [[]]
        for i, value in enumerate(values):
            if value is None:
                runs.append([])
                continue
            x = _LEFT + (offset + i) * step
            y = _TOP + plot_h - plot_h * value / top
            runs[-1].append(f"{x:.1f},{y:.1f}")
        last = next((v for v in reversed(values) if v is not None), None)
        for run in runs:
            if len(run) == 1:  # a lone point draws no line: a dot
                cx, _, cy = run[0].partition(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{colour}"/>')
            if run:
                out.append(
                    f'<polyline class="series" data-series="{escape(name)}" '
                    f'data-last="{escape(_number(last or 0))}" fill="none" stroke="{colour}" '
                    f'stroke-width="2" points="{" ".join(run)}"/>'
                )
        y = _TOP + 14 * n
        shown = (totals or {}).get(name)
        if shown is None:
            shown = _number(last) if last is not None else "-"
        out.append(
            f'<rect x="{_WIDTH - _RIGHT + 10}" y="{y - 8}" width="10" height="10" fill="{colour}"/>'
        )
        out.append(
            f'<text class="legend" data-series="{escape(name)}" x="{_WIDTH - _RIGHT + 24}" '
            f'y="{y + 1}" font-size="11" fill="#111">{escape(name)}: {escape(shown)}</text>'
        )
    out.append("</svg>")
    return "".join(out)
