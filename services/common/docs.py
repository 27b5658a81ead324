"""A command's help from its module's docstring."""

from __future__ import annotations

import inspect


def first_paragraph(doc: str | None) -> str:
    """The docstring's first paragraph as one line (its first line alone can stop mid-sentence)."""
    paragraph = inspect.cleandoc(doc or "").split("\n\n")[0]
    return " ".join(paragraph.split())
