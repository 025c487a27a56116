"""Manual maintenance launches: the table and index names an operator typed in the run config, resolved
against the catalog (exactly as typed, else as SQL identifiers), and the plan that does just those."""

from __future__ import annotations

import difflib
from typing import Sequence

from loyalty_ops.lib.maintenance.plan import (
    IndexStats,
    MaintenancePlan,
    Reason,
    TableStats,
    estimate_btree_bloat,
    index_item,
    table_item,
)


class UnknownTargetError(ValueError):
    """A requested table or index does not exist (or is ambiguous); the message names it."""


def parse_qualified_name(text: str) -> list[str]:
    """Split a possibly SQL-quoted name (``"My Schema"."Mixed Case"`` or ``public.events``) into parts,
    folding unquoted parts to lower case as PostgreSQL does; a doubled quote inside quotes is one quote."""
    parts, buf, i, quoted_part = [], [], 0, False
    text = text.strip()
    while i < len(text):
        ch = text[i]
        if ch == '"':
            quoted_part = True
            i += 1
            while i < len(text):
                if text[i] == '"':
                    if i + 1 < len(text) and text[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    break
                buf.append(text[i])
                i += 1
            else:
                raise ValueError(f"unterminated quote in {text!r}")
            i += 1
        elif ch == ".":
            parts.append("".join(buf) if quoted_part else "".join(buf).lower())
            buf, quoted_part = [], False
            i += 1
        else:
            buf.append(ch)
            i += 1
    parts.append("".join(buf) if quoted_part else "".join(buf).lower())
    return parts


def resolve_names(requested: Sequence[str], available: Sequence[tuple[str, str]], kind: str) -> list[tuple[str, str]]:
    """Match each requested name to one ``(schema, name)``: exactly as typed (``schema.name`` or a bare name
    unique across schemas), else as a SQL identifier (quotes, case folding). Raises UnknownTargetError
    listing every name that matches nothing or more than one object, with close matches."""
    by_qualified = {f"{s}.{n}": (s, n) for s, n in available}
    by_name: dict[str, list[tuple[str, str]]] = {}
    for s, n in available:
        by_name.setdefault(n, []).append((s, n))
    resolved, problems = [], []
    for raw in requested:
        candidates: list[tuple[str, str]] = []
        if raw in by_qualified:
            candidates = [by_qualified[raw]]
        elif raw in by_name:
            candidates = by_name[raw]
        else:
            try:
                parts = parse_qualified_name(raw)
            except ValueError:
                parts = []
            if len(parts) == 2 and tuple(parts) in set(available):
                candidates = [(parts[0], parts[1])]
            elif len(parts) == 1:
                candidates = by_name.get(parts[0], [])
        if len(candidates) == 1:
            if candidates[0] not in resolved:
                resolved.append(candidates[0])
        elif len(candidates) > 1:
            options = ", ".join(f"{s}.{n}" for s, n in candidates)
            problems.append(f"{kind} {raw!r} is ambiguous ({options}): write it as schema.name")
        else:
            close = difflib.get_close_matches(raw, list(by_qualified) + list(by_name), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            problems.append(f"{kind} {raw!r} does not exist in the database{hint}")
    if problems:
        raise UnknownTargetError("; ".join(problems))
    return resolved


def manual_plan(
    tables: Sequence[TableStats],
    indexes: Sequence[IndexStats],
    table_names: Sequence[str],
    index_names: Sequence[str],
) -> MaintenancePlan:
    """The plan for a hand-picked list: every named table is vacuumed and every named index rebuilt
    (a named leftover ``_ccnew``/``_ccold`` index is dropped). Unknown names fail before anything runs."""
    table_map = {(t.schema, t.name): t for t in tables}
    index_map = {(i.schema, i.name): i for i in indexes}
    problems = []
    chosen_tables: list[tuple[str, str]] = []
    chosen_indexes: list[tuple[str, str]] = []
    for names, available, kind, out in (
        (table_names, list(table_map), "table", chosen_tables),
        (index_names, list(index_map), "index", chosen_indexes),
    ):
        try:
            out.extend(resolve_names(names, available, kind))
        except UnknownTargetError as exc:
            problems.append(str(exc))
    if problems:
        raise UnknownTargetError(
            "; ".join(problems) + ". Fix the run config 'tables'/'indexes' (schema.name; quote odd names "
            'like "Odd Schema"."Mixed Case") and relaunch - nothing was changed.'
        )
    plan = MaintenancePlan(mode="manual", tables_considered=len(tables), indexes_considered=len(indexes))
    for key in chosen_tables:
        plan.items.append(table_item(table_map[key], [Reason("chosen", "named in the run config")]))
    for key in chosen_indexes:
        index = index_map[key]
        reasons = [Reason("chosen", "named in the run config")]
        if index.is_leftover:
            reasons = [Reason("leftover", "invalid index left by a failed REINDEX CONCURRENTLY: drop it")]
        plan.items.append(index_item(index, reasons, estimate_btree_bloat(index)))
    return plan
