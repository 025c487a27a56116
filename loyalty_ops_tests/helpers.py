"""Test helpers: compare two databases by schema and content, run jobs, read metadata."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, Optional

import dagster as dg
import pytest
from psycopg import sql

from devstack.postgres_cluster import LocalPostgres
from loyalty_ops.lib.pg import catalog


def table_fingerprints(cluster: LocalPostgres, database: str) -> dict[str, tuple[int, str]]:
    """Each user table's (row count, md5 of all rows in a stable order)."""
    out = {}
    with cluster.connect(database) as conn:
        for table in catalog.list_user_tables(conn):
            query = sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM ONLY {} t"
            ).format(table.identifier())
            count, digest = conn.execute(query).fetchone()
            out[table.qualified] = (count, digest)
    return out


def schema_dump(cluster: LocalPostgres, database: str) -> str:
    env = cluster.env(database)
    result = subprocess.run(
        [f"{cluster.bin_dir}/pg_dump", "--schema-only", "--no-owner"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    # Drop comment lines and pg_dump's per-run restrict token (PostgreSQL 15.14+).
    return "\n".join(
        line for line in result.stdout.splitlines() if not line.startswith("--") and not line.startswith("\\restrict")
        and not line.startswith("\\unrestrict")
    )


def materialization_metadata(result: dg.ExecuteInProcessResult, asset_key: str) -> dict[str, Any]:
    mats = [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey(asset_key)]
    assert mats, f"{asset_key} was not materialized"
    md = mats[-1].materialization.metadata
    return {k: getattr(v, "value", v) for k, v in md.items()}


def check_evaluations(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: int, *, inodes: Optional[int] = None, mode: str = "0700") -> Iterator[Path]:
    """A tmpfs of ``size`` bytes (and ``inodes`` names) mounted at ``where`` for the block: a small, real disk
    to fill. Skips the test when not root (mounting needs it); unmounts after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    options = f"size={size},mode={mode}" + (f",nr_inodes={inodes}" if inodes is not None else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
