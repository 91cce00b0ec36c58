"""Charts drawn on the server as inline SVG (bars and lines): no chart library, nothing to download."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 200
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 48, 28, 12


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}".rstrip("0").rstrip(".")


def _frame(title: str, top: float, body: str) -> Markup:
    plot_h = HEIGHT - PAD_BOTTOM - PAD_TOP
    axis = (
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP}" x2="{PAD_LEFT}" y2="{PAD_TOP + plot_h}" class="axis"/>'
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{WIDTH}" y2="{PAD_TOP + plot_h}" class="axis"/>'
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + 8}" text-anchor="end" class="tick">{_fmt(top)}</text>'
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + plot_h}" text-anchor="end" class="tick">0</text>'
    )
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'preserveAspectRatio="xMidYMid meet"><title>{escape(title)}</title>{axis}{body}</svg>'
    )


def _labels(labels: Sequence[str], xs: Sequence[float]) -> str:
    every = max(1, len(labels) // 8)  # at most ~8 labels under the axis
    return "".join(
        f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle" class="tick">{escape(label)}</text>'
        for i, (label, x) in enumerate(zip(labels, xs, strict=True))
        if i % every == 0
    )


def bar_chart(points: Sequence[tuple[str, float]], title: str) -> Markup:
    """One bar per (label, value); an empty series draws the axes and says so."""
    if not points:
        return _frame(title, 0, f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" class="empty">no data yet</text>')
    top = max(max(v for _, v in points), 1e-9)
    plot_w, plot_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / len(points)
    bars, xs = [], []
    for i, (label, value) in enumerate(points):
        h = plot_h * max(value, 0) / top
        bar_w = min(step * 0.8, 48.0)
        x = PAD_LEFT + 4 + i * step + (step - bar_w) / 2
        xs.append(x + bar_w / 2)
        bars.append(
            f'<rect x="{x:.1f}" y="{PAD_TOP + plot_h - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
            f'class="bar"><title>{escape(label)}: {_fmt(value)}</title></rect>'
        )
    return _frame(title, top, "".join(bars) + _labels([p[0] for p in points], xs))


def line_chart(points: Sequence[tuple[str, float]], title: str) -> Markup:
    """A polyline through (label, value) points, evenly spaced."""
    if not points:
        return _frame(title, 0, f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" class="empty">no data yet</text>')
    top = max(max(v for _, v in points), 1e-9)
    plot_w, plot_h = WIDTH - PAD_LEFT - 16, HEIGHT - PAD_BOTTOM - PAD_TOP
    step = plot_w / max(1, len(points) - 1)
    coords = [
        (PAD_LEFT + 8 + i * step, PAD_TOP + plot_h - plot_h * max(v, 0) / top)
        for i, (_, v) in enumerate(points)
    ]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="dot">'
        f"<title>{escape(label)}: {_fmt(v)}</title></circle>"
        for (x, y), (label, v) in zip(coords, points, strict=True)
    )
    body = f'<polyline points="{line}" class="line"/>{dots}'
    return _frame(title, top, body + _labels([p[0] for p in points], [c[0] for c in coords]))
