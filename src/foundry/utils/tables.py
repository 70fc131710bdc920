"""The one Markdown table renderer: reports, model cards, bake-offs and continual-pretraining tables."""

from __future__ import annotations

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
