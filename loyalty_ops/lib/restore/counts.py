"""Counting what a restored database holds, and comparing it with the backup's manifest."""

from __future__ import annotations

from dataclasses import dataclass, field

from loyalty_ops.lib.backup.dump import BackupError
from loyalty_ops.lib.backup.manifest import BackupManifest
from loyalty_ops.lib.pg import catalog
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.pg.session import connect
from loyalty_ops.lib.restore.verify import Comparison, compare_with_manifest


@dataclass
class RestoredCounts:
    rows: dict[str, int] = field(default_factory=dict)
    catalog: dict[str, int] = field(default_factory=dict)
    materialized_views: dict[str, dict] = field(default_factory=dict)


def restored_counts(spec: ConnectionSpec, database: str) -> RestoredCounts:
    with connect(spec.with_database(database), autocommit=False, error=BackupError) as conn:
        tables = catalog.list_user_tables(conn)
        counts = RestoredCounts(
            rows=catalog.count_rows(conn, tables),
            catalog=catalog.catalog_counts(conn),
            materialized_views=catalog.materialized_views(conn),
        )
        conn.rollback()
    return counts


def compare_counts(manifest: BackupManifest, counts: RestoredCounts) -> Comparison:
    return compare_with_manifest(
        manifest.row_counts,
        manifest.catalog_counts,
        counts.rows,
        counts.catalog,
        manifest.materialized_views if manifest.records_materialized_views else None,
        counts.materialized_views,
    )


def compare_restored(spec: ConnectionSpec, database: str, manifest: BackupManifest) -> Comparison:
    return compare_counts(manifest, restored_counts(spec, database))
