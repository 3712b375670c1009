"""Small server-rendered SVG charts for the console: no script, no library, nothing fetched.

A chart is an area under a line of (time, value) points over a fixed window ending now, with the
largest value and zero on the left axis and the window's start and end below. Colours come from
classes in console.css (the page's CSP forbids `style` attributes; presentation attributes and
classes are fine), so a maintainer restyles the charts there.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

__all__ = ["chart"]

WIDTH, HEIGHT = 400, 150
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 20  # margins for the labels


def _number(value: float) -> str:
    if value >= 10_000_000:
        return f"{value / 1_000_000:.0f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.1f}"


def _span(seconds: float) -> str:
    minutes = seconds / 60
    return f"-{minutes:.0f} min" if minutes >= 1 else f"-{seconds:.0f} s"


def chart(
    title: str, points: Sequence[tuple[float, float]], now: float, window: float, unit: str = ""
) -> str:
    """An inline <svg> of `points` (time, value) between now - window and now."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    start = now - window
    shown = [(t, v) for t, v in points if t >= start]
    top = max((v for _, v in shown), default=0.0)
    scale = top if top > 0 else 1.0
    label = escape(title)

    def xy(t: float, v: float) -> str:
        x = LEFT + plot_w * min(1.0, max(0.0, (t - start) / window))
        y = TOP + plot_h * (1 - v / scale)
        return f"{x:.1f},{y:.1f}"

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{label}">',
        f"<title>{label}</title>",
        f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>',
    ]
    if shown:
        line = " ".join(xy(t, v) for t, v in shown)
        first_x = xy(shown[0][0], 0).split(",")[0]
        last_x = xy(shown[-1][0], 0).split(",")[0]
        base = TOP + plot_h
        parts.append(
            f'<polygon class="area" points="{first_x},{base} {line} {last_x},{base}"/>'
            if len(shown) > 1
            else ""
        )
        parts.append(f'<polyline class="line" points="{line}"/>')
        cx, cy = xy(*shown[-1]).split(",")
        parts.append(f'<circle class="dot" cx="{cx}" cy="{cy}" r="3"/>')
    else:
        parts.append(
            f'<text class="axis" x="{LEFT + plot_w / 2:.0f}" y="{TOP + plot_h / 2:.0f}" '
            'text-anchor="middle">no samples yet</text>'
        )
    unit_text = f" {escape(unit)}" if unit else ""
    parts += [
        f'<text class="axis" x="{LEFT - 4}" y="{TOP + 10}" text-anchor="end">{_number(top)}</text>',
        f'<text class="axis" x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">0</text>',
        f'<text class="axis" x="{LEFT}" y="{HEIGHT - 6}">{_span(window)}</text>',
        f'<text class="axis" x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end">'
        f"now{unit_text}</text>",
        "</svg>",
    ]
    return "".join(parts)
