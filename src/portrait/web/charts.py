"""Charts drawn on the server as inline SVG: no script, no library, nothing loaded from elsewhere."""

from __future__ import annotations

from html import escape

from markupsafe import Markup


def bars(items: list[tuple[str, float]], *, width: int = 640, height: int = 180, label: str = "") -> Markup:
    """A vertical bar chart with a title for screen readers; labels under the bars, values on hover."""
    if not items:
        return Markup('<p class="empty">No data yet.</p>')
    top = max(value for _, value in items) or 1
    gap = 4
    bar = max(4, (width - gap * len(items)) // len(items))
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height + 40}" role="img" aria-label="{escape(label)}">']
    for index, (name, value) in enumerate(items):
        h = int((height - 10) * value / top)
        x = index * (bar + gap)
        parts.append(f'<g><title>{escape(name)}: {value:,.0f}</title>'
                     f'<rect x="{x}" y="{height - h}" width="{bar}" height="{h}"></rect></g>')
        if len(items) <= 16 or index % max(1, len(items) // 8) == 0:
            parts.append(f'<text x="{x + bar / 2}" y="{height + 14}" text-anchor="middle">{escape(name[-8:])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def funnel(steps: list[dict[str, object]], *, width: int = 640) -> Markup:
    """Horizontal bars, one per funnel step, as a share of the first step."""
    if not steps:
        return Markup("")
    row = 34
    parts = [f'<svg class="chart" viewBox="0 0 {width} {row * len(steps)}" role="img" aria-label="funnel">']
    for index, step in enumerate(steps):
        share = float(step["conversion_from_start"])  # type: ignore[arg-type]
        w = max(2, int((width - 260) * share))
        y = index * row
        parts.append(f'<text x="0" y="{y + 21}">{escape(str(step["event"]))[:28]}</text>'
                     f'<rect x="200" y="{y + 6}" width="{w}" height="22"></rect>'
                     f'<text x="{210 + w}" y="{y + 21}">{step["profiles"]:,} ({share:.0%})</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


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
