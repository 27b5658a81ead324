"""Inline SVG drawn on the server: the totals over time (Jepsen's bank chart) and the hash ring's circle."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

from services.admin.ui.live import Sample

PALETTE = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#2c7a7b", "#975a16", "#4a5568")


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def totals_chart(samples: Sequence[Sample], field: str, initial: int | None, label: str, unit: str,
                 fired: Sequence[float] = (), width: int = 640, height: int = 130) -> Markup:
    """One total over time: its line, the seeded value dashed, the seconds a fault was armed shaded, and a tick
    at each fault that fired. The y-range is centred on the seeded value, so that a constant total is flat."""
    if not samples:
        return Markup('<p class="muted">no samples yet</p>')
    values = [getattr(s, field) for s in samples]
    centre = initial if initial is not None else values[-1]
    spread = max(max(abs(v - centre) for v in values) * 1.2, max(abs(centre) * 0.01, 1))
    t0, t1 = samples[0].t, max(samples[-1].t, samples[0].t + 1)
    pad = 8

    def x(t: float) -> float:
        return pad + (width - 2 * pad) * (t - t0) / (t1 - t0)

    def y(v: float) -> float:
        return height / 2 - (height / 2 - pad) * (v - centre) / spread

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}">']
    start = None
    for i, s in enumerate(samples):
        if s.armed and start is None:
            start = s.t
        if start is not None and (not s.armed or i == len(samples) - 1):
            parts.append(f'<rect class="fault" x="{x(start):.1f}" y="0" width="{max(x(s.t) - x(start), 2):.1f}" '
                         f'height="{height}"><title>fault armed</title></rect>')
            start = None
    for t in fired:
        if t0 <= t <= t1:
            parts.append(f'<line class="fired" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="0" y2="{height}"/>')
    parts.append(f'<line class="initial" x1="{pad}" x2="{width - pad}" y1="{y(centre):.1f}" y2="{y(centre):.1f}"/>')
    points = " ".join(f"{x(s.t):.1f},{y(v):.1f}" for s, v in zip(samples, values, strict=True))
    parts.append(f'<polyline class="total" points="{points}"/>')
    delta = values[-1] - centre
    note = "constant" if delta == 0 else f"{delta:+,} vs seeded"
    parts.append(f'<text x="{pad + 2}" y="14">{escape(label)}: {values[-1]:,} {escape(unit)} ({note})</text>')
    parts.append(f'<text x="{width - pad - 2}" y="{height - 4}" text-anchor="end" class="axis">last '
                 f'{t1 - t0:.0f} s</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def ring_svg(arcs: Sequence[dict[str, Any]], nodes: Sequence[str], size: int = 260) -> Markup:
    """The circle, each node's arcs in its colour (a point owns the arc that ends at it)."""
    if not arcs:
        return Markup('<p class="muted">the ring is empty</p>')
    index = {name: i for i, name in enumerate(nodes)}
    c, r = size / 2, size / 2 - 16
    parts = [f'<svg class="ring" viewBox="0 0 {size} {size}" role="img" aria-label="hash ring">',
             f'<circle cx="{c}" cy="{c}" r="{r}" class="ring-base"/>']
    for arc in arcs:
        a0, a1 = 2 * math.pi * arc["start"] - math.pi / 2, 2 * math.pi * arc["end"] - math.pi / 2
        large = 1 if arc["end"] - arc["start"] > 0.5 else 0
        x0, y0 = c + r * math.cos(a0), c + r * math.sin(a0)
        x1, y1 = c + r * math.cos(a1), c + r * math.sin(a1)
        parts.append(f'<path d="M{x0:.2f},{y0:.2f} A{r},{r} 0 {large} 1 {x1:.2f},{y1:.2f}" '
                     f'stroke="{color(index.get(arc["owner"], 0))}" class="arc"><title>{escape(arc["owner"])}'
                     "</title></path>")
    parts.append("</svg>")
    return Markup("".join(parts))
