"""The one plotting module every `--plot` uses: matplotlib with the Agg backend (no display, no browser)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend


def plot_rows(rows: Sequence[Any], path: Path, title: str) -> None:
    """Orders/s and end-to-end p99 of each pattern (rows with `pattern`, `in_flight`, `orders_per_s`,
    `e2e_p99_ms`), one group of bars per pattern and one bar per concurrency."""
    patterns = list(dict.fromkeys(r.pattern for r in rows))
    levels = sorted({r.in_flight for r in rows})
    by = {(r.pattern, r.in_flight): r for r in rows}
    width = 0.8 / max(len(levels), 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for k, level in enumerate(levels):
        xs = [i + (k - (len(levels) - 1) / 2) * width for i in range(len(patterns))]
        found = [by.get((p, level)) for p in patterns]
        top.bar(xs, [r.orders_per_s if r else 0 for r in found], width, label=f"{level} in flight")
        bottom.bar(xs, [r.e2e_p99_ms if r else 0 for r in found], width, label=f"{level} in flight")
    top.set_ylabel("orders/s")
    bottom.set_ylabel("end-to-end p99 (ms)")
    bottom.set_xticks(range(len(patterns)), patterns)
    top.legend()
    top.set_title(title, fontsize=10)
    for ax in (top, bottom):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
