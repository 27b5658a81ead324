"""The one plotting module every bench's `--plot` uses: matplotlib's Agg canvas (no display, no browser).

A bench describes its chart as panels over the rows it prints and writes with `--json`: which column gives
the groups along the x axis, which column (if any) splits each group into series, and which numeric columns
are drawn as bars. `figure` draws them; `save` writes the PNG.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Panel:
    """One subplot: for each distinct value of `x` in `rows` (in first-seen order), one bar per series value and
    per column. `columns` maps each drawn column to its name in the legend; a row is a mapping or an object
    with those attributes (a bench's dataclass row)."""

    rows: Sequence[Any]
    x: str
    columns: Mapping[str, str]
    y_label: str  # with its unit
    x_label: str = ""
    series: str | None = None  # the column whose values split each group, e.g. the system or the concurrency
    series_name: str = "{}"  # how a series value reads in the legend, e.g. "{} in flight"
    title: str = ""
    log: bool = False  # for latencies and rates that span orders of magnitude
    reference: tuple[float, str] | None = None  # a dashed horizontal line and its legend name
    x_names: Mapping[Any, str] = field(default_factory=dict)  # how an x value reads under its group


def _value(row: Any, column: str) -> Any:
    return row[column] if isinstance(row, Mapping) else getattr(row, column)


def figure(title: str, panels: Sequence[Panel]) -> Figure:
    """The panels stacked (two columns from four panels on), under `title`. A name keeps its colour in every
    panel and no two names share one: a panel of one column and no series colours each bar by its x value (the
    tick says which), the others by their legend name."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = 2 if len(panels) >= 4 else 1
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(7 * cols if cols > 1 else 10, 3.6 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=11)
    colours: dict[str, str] = {}
    for panel, ax in zip(panels, fig.subplots(rows, cols, squeeze=False).flat, strict=False):
        _draw(ax, panel, colours)
    for ax in fig.axes[len(panels):]:
        ax.set_visible(False)
    return fig


def save(fig: Figure, path: Path) -> None:
    """Write the figure as a PNG."""
    fig.savefig(path, dpi=110, format="png")


def _draw(ax: Any, panel: Panel, colours: dict[str, str]) -> None:
    groups = list(dict.fromkeys(_value(r, panel.x) for r in panel.rows))
    series = list(dict.fromkeys(_value(r, panel.series) for r in panel.rows)) if panel.series else [None]
    by = {(_value(r, panel.x), _value(r, panel.series) if panel.series else None): r for r in panel.rows}
    bars = [(s, c) for s in series for c in panel.columns]
    by_x = len(bars) == 1 and not panel.series
    width = 0.8 / max(len(bars), 1)
    for k, (s, column) in enumerate(bars):
        xs = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(groups))]
        found = [by.get((g, s)) for g in groups]
        heights = [float(_value(r, column)) if r is not None else math.nan for r in found]
        label = _label(panel, s, column)
        names = [str(g) for g in groups] if by_x else [label]
        drawn = ax.bar(xs, heights, width, label="_nolegend_" if by_x else label,
                       color=[colours.setdefault(n, f"C{len(colours) % 10}") for n in names])
        counts = all(h.is_integer() for h in heights if not math.isnan(h))  # errors, kills: no ".0"
        ax.bar_label(drawn, labels=[_short(h, counts) for h in heights], fontsize=7, padding=1)
    if panel.reference:
        at, name = panel.reference
        ax.axhline(at, color="0.3", linestyle="--", linewidth=1, label=name)
    wrap = max(22, 90 // max(len(groups), 1))  # long names wrap to fit under their group
    ax.set_xticks(range(len(groups)), [textwrap.fill(panel.x_names.get(g, str(g)), wrap) for g in groups])
    ax.set_ylabel(panel.y_label)
    if panel.x_label:
        ax.set_xlabel(panel.x_label)
    if panel.title:
        ax.set_title(panel.title, fontsize=10)
    if panel.log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_log_ticks())
        ax.yaxis.set_minor_formatter(_log_ticks(labelOnlyBase=False, minor_thresholds=(1, 0.4)))
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    if not by_x or panel.reference:
        ax.legend(fontsize=8)


def _log_ticks(**options: Any) -> Any:
    """matplotlib's choice of which log ticks to label (minor ones too when the axis spans less than a decade),
    written as plain figures: 20, 300, 4.5k, 1.0M rather than 2×10¹ or 1e+06."""
    from matplotlib.ticker import LogFormatter

    class PlainLog(LogFormatter):
        def __call__(self, x: float, pos: int | None = None) -> str:
            return (f"{x:g}" if x < 1e4 else _short(x)) if super().__call__(x, pos) else ""

    return PlainLog(**options)


def _label(panel: Panel, series: Any, column: str) -> str:
    parts = [panel.series_name.format(series)] if panel.series else []
    if len(panel.columns) > 1 or not parts:
        parts.append(panel.columns[column])
    return " ".join(parts)


def _short(x: float, count: bool = False) -> str:
    """A figure in four characters or so: 0.42, 7.3, 512, 4.1k, 37k, 2.1M (a count below 1,000 as it is)."""
    if math.isnan(x):
        return ""
    if count and abs(x) < 1000:
        return f"{x:.0f}"
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale * 0.9995:  # 999,999 reads 1.0M, not 1000k
            return f"{x / scale:.{1 if abs(x) < 10 * scale else 0}f}{suffix}"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.2g}" if abs(x) < 1 else f"{x:.1f}"
