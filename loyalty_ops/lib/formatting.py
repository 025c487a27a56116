"""How sizes and text are shown in run logs, metadata and markdown: one ``human_bytes``, one error headline,
one markdown cell escape and one markdown table, so every report reads (and escapes) the same way."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence


def human_bytes(n: Optional[float]) -> str:
    """``1536`` -> ``"1.5 KB"`` (binary units, one decimal; bytes whole); ``None`` -> ``""``."""
    if n is None:
        return ""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} TB"


def first_line(error: BaseException) -> str:
    """The first line of an error's message (PostgreSQL's primary message), or its type's name when the
    message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def markdown_cell(value: Any) -> str:
    """``value`` made safe inside a markdown table cell: ``|`` escaped, line breaks flattened. The value may
    carry markdown of its own (bold, code spans); for text that must show as typed use :func:`markdown_literal`."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _as_typed(value: Any) -> str:
    # Backslashes escaped (a name's "\|" must not turn into a cell separator), backticks made ' so they
    # cannot end a code span.
    return str(value).replace("\\", "\\\\").replace("`", "'")


def markdown_literal(value: Any) -> str:
    """A name or free text shown as typed, in a table cell or a code span written by hand (identifiers
    may contain ``|``, backslashes and backticks): :func:`markdown_cell` of the value as typed."""
    return markdown_cell(_as_typed(value))


def markdown_code(value: Any) -> str:
    """A name as a code span, for a :func:`markdown_table` cell (the table escapes its ``|``)."""
    return "`" + _as_typed(value).replace("\n", " ") + "`"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: Optional[str] = None) -> str:
    """A markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default all left). Every cell
    goes through :func:`markdown_cell`."""
    align = align or "l" * len(headers)
    separators = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(separators) + " |"]
    lines += ["| " + " | ".join(markdown_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
