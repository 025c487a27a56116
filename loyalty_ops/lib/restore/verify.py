"""Comparing a restored database with what its backup's manifest recorded at dump time (pure logic).

Row counts must match exactly, table by table; the catalog counts (tables, indexes, constraints,
sequences, views, functions) must match kind by kind; each materialized view must be populated or not as it
was, with the same number of rows. Every problem names the table, the view or the kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from loyalty_ops.lib.formatting import markdown_code, markdown_table


@dataclass(frozen=True)
class Mismatch:
    what: str  # "table public.events" or "catalog indexes"
    expected: object
    actual: object
    detail: str

    def message(self) -> str:
        return f"{self.what}: {self.detail}"


@dataclass
class Comparison:
    mismatches: list[Mismatch] = field(default_factory=list)
    tables_compared: int = 0
    rows_compared: int = 0
    matviews_compared: int = 0

    @property
    def passed(self) -> bool:
        return not self.mismatches

    def summary(self, limit: int = 10) -> str:
        if self.passed:
            views = f" and {self.matviews_compared} materialized view(s)" if self.matviews_compared else ""
            return f"{self.tables_compared} tables, {self.rows_compared:,} rows{views} match the manifest exactly"
        shown = "; ".join(m.message() for m in self.mismatches[:limit])
        more = f" (and {len(self.mismatches) - limit} more)" if len(self.mismatches) > limit else ""
        return f"{len(self.mismatches)} difference(s) from the manifest: {shown}{more}"


def compare_row_counts(expected: Mapping[str, int], actual: Mapping[str, int]) -> list[Mismatch]:
    out = []
    for table in sorted(set(expected) | set(actual)):
        if table not in actual:
            out.append(Mismatch(f"table {table}", expected[table], None, f"missing after restore (had {expected[table]:,} rows)"))
        elif table not in expected:
            out.append(Mismatch(f"table {table}", None, actual[table], "restored but not in the manifest"))
        elif int(expected[table]) != int(actual[table]):
            diff = int(actual[table]) - int(expected[table])
            out.append(
                Mismatch(
                    f"table {table}", expected[table], actual[table],
                    f"{actual[table]:,} rows restored, {expected[table]:,} at dump time ({diff:+,})",
                )
            )
    return out


def compare_catalog_counts(expected: Mapping[str, int], actual: Mapping[str, int]) -> list[Mismatch]:
    out = []
    for kind in sorted(expected):
        got = actual.get(kind)
        if got is None or int(got) != int(expected[kind]):
            out.append(
                Mismatch(f"catalog {kind}", expected[kind], got, f"{got if got is not None else 'no'} {kind} restored, {expected[kind]} at dump time")
            )
    return out


def _view_state(state: Optional[Mapping]) -> str:
    if state is None:
        return "missing"
    if not state.get("populated"):
        return "not populated"
    return f"populated with {int(state.get('rows') or 0):,} rows"


def compare_materialized_views(expected: Mapping[str, Mapping], actual: Mapping[str, Mapping]) -> list[Mismatch]:
    """Each view populated (or not) as at dump time, with the same rows; none missing, none extra."""
    out = []
    for view in sorted(set(expected) | set(actual)):
        e, a = expected.get(view), actual.get(view)
        if e is None:
            out.append(Mismatch(f"materialized view {view}", None, dict(a or {}), f"restored ({_view_state(a)}) but not in the manifest"))
            continue
        same = a is not None and bool(e.get("populated")) == bool(a.get("populated")) and (
            not e.get("populated") or int(e.get("rows") or 0) == int(a.get("rows") or 0)
        )
        if not same:
            out.append(
                Mismatch(
                    f"materialized view {view}", dict(e), dict(a) if a is not None else None,
                    f"{_view_state(a)} after restore, {_view_state(e)} at dump time",
                )
            )
    return out


def compare_with_manifest(
    expected_rows: Mapping[str, int],
    expected_catalog: Mapping[str, int],
    actual_rows: Mapping[str, int],
    actual_catalog: Mapping[str, int],
    expected_matviews: Optional[Mapping[str, Mapping]] = None,
    actual_matviews: Optional[Mapping[str, Mapping]] = None,
) -> Comparison:
    """``expected_matviews`` None: the manifest predates materialized views being recorded; they are not compared."""
    result = Comparison(tables_compared=len(expected_rows), rows_compared=sum(int(v) for v in expected_rows.values()))
    result.mismatches += compare_row_counts(expected_rows, actual_rows)
    result.mismatches += compare_catalog_counts(expected_catalog, actual_catalog)
    if expected_matviews is not None:
        result.matviews_compared = len(expected_matviews)
        result.mismatches += compare_materialized_views(expected_matviews, actual_matviews or {})
    return result


def row_count_table(expected: Mapping[str, int], actual: Mapping[str, int]) -> str:
    """A markdown table of expected vs restored rows, for the UI."""
    def rows_text(count: Optional[int]) -> str:
        return f"{int(count):,}" if count is not None else "-"

    rows = []
    for table in sorted(set(expected) | set(actual)):
        e, a = expected.get(table), actual.get(table)
        ok = "ok" if e is not None and a is not None and int(e) == int(a) else "MISMATCH"
        rows.append((markdown_code(table), rows_text(e), rows_text(a), ok))
    return markdown_table(["table", "at dump", "restored", ""], rows, "lrrl")
