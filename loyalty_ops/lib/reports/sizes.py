"""Database and table sizes (the guide's "Database size", "Table sizes" and "Check Table Bloat" queries) and
growth between two snapshots.

The guide's queries look at ``schemaname = 'public'`` and compute index size as total minus heap, which
also counts TOAST. Here every user schema is listed and the parts are separated: ``table_bytes``
(``pg_relation_size``, the heap as the guide's ``table_size``), ``index_bytes`` (``pg_indexes_size``) and
``toast_bytes`` (the rest: TOAST, free space map, visibility map).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Optional

import psycopg

from loyalty_ops.lib.pg.catalog import SYSTEM_SCHEMA_FILTER

TABLE_SIZES_SQL = f"""
SELECT n.nspname, c.relname,
       pg_total_relation_size(c.oid) AS total_bytes,
       pg_relation_size(c.oid) AS table_bytes,
       pg_indexes_size(c.oid) AS index_bytes,
       greatest(c.reltuples, 0)::bigint AS estimated_rows
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND {SYSTEM_SCHEMA_FILTER}
"""


@dataclass
class TableSize:
    schema: str
    table: str
    total_bytes: int
    table_bytes: int
    index_bytes: int
    estimated_rows: int

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def toast_bytes(self) -> int:
        return max(self.total_bytes - self.table_bytes - self.index_bytes, 0)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["name"] = self.name
        out["toast_bytes"] = self.toast_bytes
        return out


@dataclass
class SizeSnapshot:
    database: str
    database_bytes: int
    tables: list[TableSize]

    @property
    def table_count(self) -> int:
        return len(self.tables)

    def top(self, by: str, n: int) -> list[TableSize]:
        return sorted(self.tables, key=lambda t: (-getattr(t, by), t.name))[:n]


def size_snapshot(conn: psycopg.Connection) -> SizeSnapshot:
    database, database_bytes = conn.execute("SELECT current_database(), pg_database_size(current_database())").fetchone()
    tables = [TableSize(*row) for row in conn.execute(TABLE_SIZES_SQL).fetchall()]
    return SizeSnapshot(database=database, database_bytes=int(database_bytes), tables=tables)


@dataclass(frozen=True)
class Growth:
    name: str
    previous_bytes: Optional[int]
    current_bytes: int

    @property
    def delta_bytes(self) -> Optional[int]:
        return None if self.previous_bytes is None else self.current_bytes - self.previous_bytes

    @property
    def delta_pct(self) -> Optional[float]:
        if not self.previous_bytes:
            return None
        return round(100.0 * (self.current_bytes - self.previous_bytes) / self.previous_bytes, 2)


def table_growth(previous: Mapping[str, int], current: Mapping[str, int]) -> list[Growth]:
    """Growth of each current table against a previous ``{name: total_bytes}`` map, biggest growth first.
    Tables new since then have ``previous_bytes`` None."""
    rows = [Growth(name, previous.get(name), size) for name, size in current.items()]
    rows.sort(key=lambda g: (-(g.delta_bytes if g.delta_bytes is not None else g.current_bytes), g.name))
    return rows


def dropped_tables(previous: Mapping[str, int], current: Mapping[str, int]) -> list[str]:
    return sorted(set(previous) - set(current))
