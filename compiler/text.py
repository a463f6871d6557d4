"""Plain-text tables for reports and command output."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def format_table(rows: Sequence[Sequence[str]], right: Collection[int] = (),
                 indent: str = "", rule: bool = True) -> list[str]:
    """`rows` (the first is the header) as aligned lines; columns in `right` are right-aligned,
    and a rule of dashes goes under the header when `rule` is set."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.rjust(width) if i in right else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths))]
        lines.append(indent + "  ".join(cells).rstrip())
        if index == 0 and rule:
            lines.append(indent + "  ".join("-" * width for width in widths))
    return lines
