"""Charts drawn on the server as inline SVG: no script, no library, nothing loaded from elsewhere.

The layout is worked out here in the chart's own units (``WIDTH`` wide, text ``FONT`` high); the stylesheet keeps a
chart between ``min-width`` and ``max-width`` so the text stays readable, scrolling inside its box on a phone.
Labels are shown whole up to ``LABEL_CHARS`` characters (longer ones end in "…", the whole text is the bar's
tooltip); when they do not fit side by side under the bars they are turned 45 degrees.

A chart is an image to a screen reader and its exact values are a mouse's hover away: so every chart also gives
its figures as a table, behind a disclosure under the chart (WCAG 1.1.1). The box a chart scrolls in on a phone
takes the keyboard focus (through that disclosure, or itself for the funnel), so it scrolls from the keyboard too.
"""

from __future__ import annotations

import math
from html import escape

from markupsafe import Markup

WIDTH = 640
FONT = 12
CHAR = FONT * 0.62  # a character's width, for layout (system-ui digits and letters run 0.55-0.62 of the size)
LABEL_CHARS = 24
PLOT_HEIGHT = 180
SLANT = math.cos(math.radians(45))


def number(value: float) -> str:
    """An axis or bar value as people read it: 950, 1,200, 12.5k, 3.4M, 0.25."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:,.4g}"


def ticks(top: float, *, whole: bool = True, count: int = 4) -> list[float]:
    """Round values for an axis from 0 to at least ``top``: a step of 1, 2, 2.5 or 5 times a power of ten (whole
    numbers only when the values are counts)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if whole:
        step = max(1.0, math.ceil(step))
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def short(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bars(items: list[tuple[str, float]], *, label: str, columns: tuple[str, str]) -> Markup:
    """A vertical bar chart with a value axis (ticks and grid lines), a label under each bar and the exact value
    on hover; ``label`` names the chart, ``columns`` head its table of figures (what a bar is, what it counts)."""
    if not items:
        return Markup('<p class="empty">No data yet.</p>')
    axis = ticks(max(value for _, value in items))
    names = [short(name) for name, _ in items]
    longest = max(len(name) for name in names) * CHAR
    left = max(len(number(t)) for t in axis) * CHAR + 10
    slot = (WIDTH - left) / len(items)
    slanted = longest > slot - 6
    if slanted:  # the first label runs down to the left of its bar: keep it inside the chart
        left = max(left, longest * SLANT - slot / 2 + FONT)
        slot = (WIDTH - left) / len(items)
    every = max(1, math.ceil((FONT + 4) / slot)) if slanted else 1
    bottom = (longest + FONT) * SLANT + 10 if slanted else FONT + 12
    height = 8 + PLOT_HEIGHT + bottom
    base = 8 + PLOT_HEIGHT

    def y(value: float) -> float:
        return base - PLOT_HEIGHT * value / axis[-1]

    described = f"{label}: {len(items)} bars, the figures are in the table after the chart"
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {height:.0f}" role="img" aria-label="{escape(described)}">',
             '<g class="y-axis">']
    for tick in axis:
        parts.append(f'<line x1="{left:.1f}" x2="{WIDTH}" y1="{y(tick):.1f}" y2="{y(tick):.1f}"></line>'
                     f'<text x="{left - 6:.1f}" y="{y(tick) + FONT * 0.35:.1f}" text-anchor="end">'
                     f"{number(tick)}</text>")
    parts.append('</g><g class="bars">')
    gap = min(6.0, slot * 0.15)
    for index, (name, value) in enumerate(items):
        x = left + index * slot + gap / 2
        parts.append(f'<g><title>{escape(name)}: {value:,.0f}</title><rect x="{x:.1f}" y="{y(value):.1f}" '
                     f'width="{slot - gap:.1f}" height="{base - y(value):.1f}"></rect></g>')
    parts.append('</g><g class="x-axis">')
    for index, name in enumerate(names):
        if index % every:
            continue
        x = left + (index + 0.5) * slot
        turn = f' transform="rotate(-45 {x:.1f} {base + FONT + 2:.1f})"' if slanted else ""
        parts.append(f'<text x="{x:.1f}" y="{base + FONT + 2:.1f}" text-anchor="{"end" if slanted else "middle"}"'
                     f"{turn}>{escape(name)}</text>")
    parts.append("</g></svg>")
    return Markup('<div class="chart-box">' + "".join(parts) + figures(items, label, columns) + "</div>")


def figures(items: list[tuple[str, float]], label: str, columns: tuple[str, str]) -> str:
    """A chart's figures as a table with header cells, closed until asked for."""
    rows = "".join(f'<tr><th scope="row">{escape(name)}</th><td>{value:,.0f}</td></tr>' for name, value in items)
    return (f'<details class="figures"><summary>{escape(label.capitalize())} as a table</summary><table>'
            f'<thead><tr><th scope="col">{escape(columns[0])}</th><th scope="col">{escape(columns[1])}</th></tr>'
            f"</thead><tbody>{rows}</tbody></table></details>")


def funnel(steps: list[dict[str, object]]) -> Markup:
    """Horizontal bars, one per funnel step, as a share of the first step; the step's name on the left, its
    customers and share after the bar."""
    if not steps:
        return Markup("")
    row = 34
    names = [short(str(step["event"])) for step in steps]
    values = [f'{step["profiles"]:,} ({float(step["conversion_from_start"]):.0%})'  # type: ignore[arg-type]
              for step in steps]
    left = max(len(name) for name in names) * CHAR + 12
    room = WIDTH - left - max(len(value) for value in values) * CHAR - 10
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {row * len(steps)}" role="img" '
             'aria-label="funnel: customers at each step, the figures are in the table after the chart">']
    for index, step in enumerate(steps):
        share = float(step["conversion_from_start"])  # type: ignore[arg-type]
        w = max(2.0, room * share)
        y = index * row
        parts.append(f'<g class="x-axis"><text x="0" y="{y + 21}">{escape(names[index])}</text></g>'
                     f'<rect x="{left:.1f}" y="{y + 6}" width="{w:.1f}" height="22"></rect>'
                     f'<g class="values"><text x="{left + w + 6:.1f}" y="{y + 21}">{values[index]}</text></g>')
    parts.append("</svg>")
    # Nothing in the box takes the focus (its table follows it): the box does, to scroll on a phone by keyboard.
    return Markup('<div class="chart-box" tabindex="0" role="group" aria-label="funnel chart">' + "".join(parts)
                  + "</div>")


def sparkline(values: list[float], *, width: int = 120, height: int = 28) -> Markup:
    """A small trend line (a segment's size over its recounts)."""
    if len(values) < 2:
        return Markup('<span class="hint">-</span>')
    low, high = min(values), max(values)
    span = (high - low) or 1
    step = width / (len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 3 - (v - low) / span * (height - 6):.1f}"
                      for i, v in enumerate(values))
    return Markup(f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
                  f'aria-label="from {values[0]:,.0f} to {values[-1]:,.0f}"><polyline points="{points}"></polyline>'
                  "</svg>")
