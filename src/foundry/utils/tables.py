"""The one Markdown table renderer: reports, model cards, bake-offs and continual-pretraining tables."""

from __future__ import annotations

import math
from typing import Iterable


def md_escape(cell) -> str:
    """A cell as Markdown table text: `|` escaped and newlines flattened, so a value never breaks a row."""
    return str(cell).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: Iterable[Iterable], right: Iterable[int] = ()) -> str:
    """A Markdown table; columns whose index is in `right` are right-aligned (numbers)."""
    right = set(right)
    lines = ["| " + " | ".join(map(md_escape, header)) + " |",
             "|" + "".join("---:|" if i in right else "---|" for i in range(len(header)))]
    lines += ["| " + " | ".join(map(md_escape, row)) + " |" for row in rows]
    return "\n".join(lines)


def fmt(x, digits: int = 4) -> str:
    """A number as a table cell: integers with thousands separators, floats to `digits` significant digits."""
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:,.0f}"
    return str(x)
