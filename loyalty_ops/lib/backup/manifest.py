"""The manifest written next to each backup (``FILE.manifest.json``): what the dump's snapshot held.

It lets a restore, drill or retention run anywhere (even from the S3 copy alone) compare against exact
numbers taken at dump time: row counts per table, catalog object counts, materialized views (populated or
not, and their rows), the database's encoding and locale, versions and the checksum.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from loyalty_ops.lib.backup.dump import BackupResult
from loyalty_ops.lib.backup.naming import MANIFEST_SUFFIX
from loyalty_ops.lib.pg.catalog import TableRef

MANIFEST_VERSION = 3  # 2: materialized_views and database_locale are recorded; 3: globals, database_properties


@dataclass
class BackupManifest:
    database: str
    filename: str
    taken_at: str
    compression: str
    sha256: str
    bytes: int
    raw_bytes: int
    server_version: str
    pg_dump_version: str
    tables: list[dict] = field(default_factory=list)  # {"schema", "name", "owner", "kind"}
    row_counts: dict[str, int] = field(default_factory=dict)
    # where row_counts came from: "dump_stream" (the dump's own COPY data), "dump_stream+count" or "count"
    # (count(*) in the dump's snapshot); manifests that do not say were written with count(*)
    row_counts_source: str = "count"
    row_counts_note: str = ""
    # the server dumped: {"standby": bool, "lag_s": seconds behind its primary or None}; empty in older manifests
    source: dict = field(default_factory=dict)
    catalog_counts: dict[str, int] = field(default_factory=dict)
    # {"schema.name": {"populated": bool, "rows": int | None}}; empty in manifests written before they were recorded
    materialized_views: dict[str, dict] = field(default_factory=dict)
    # {"encoding", "lc_collate", "lc_ctype", "locale_provider"[, "icu_locale"]}; empty in older manifests
    database_locale: dict[str, str] = field(default_factory=dict)
    # The cluster globals file beside the backup (lib/backup/globals.py: filename, sha256, bytes, role_passwords,
    # ...) and the database's own properties (owner, grants, settings); empty in older manifests
    globals: dict = field(default_factory=dict)
    database_properties: dict = field(default_factory=dict)
    version: int = MANIFEST_VERSION

    @property
    def records_materialized_views(self) -> bool:
        """False for manifests written before materialized views were recorded (nothing to compare them with)."""
        return self.version >= 2

    def table_refs(self) -> list[TableRef]:
        return [TableRef(t["schema"], t["name"], t.get("owner", ""), t.get("kind", "r")) for t in self.tables]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "BackupManifest":
        data = json.loads(text)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def manifest_for(result: BackupResult) -> BackupManifest:
    """The manifest of a backup just taken: what its snapshot held, for later restores and drills."""
    details = getattr(result, "catalog_details", None) or {}
    return BackupManifest(
        database=result.name.database,
        filename=result.path.name,
        taken_at=result.name.taken_at.isoformat(),
        compression=result.name.compression,
        sha256=result.file.sha256,
        bytes=result.file.written_bytes,
        raw_bytes=result.file.raw_bytes,
        server_version=result.server_version,
        pg_dump_version=result.pg_dump_version,
        tables=[{"schema": t.schema, "name": t.name, "owner": t.owner, "kind": t.kind} for t in result.tables],
        row_counts=result.row_counts,
        row_counts_source=getattr(result, "row_counts_source", "count"),
        row_counts_note=getattr(result, "row_counts_note", ""),
        source=dict(getattr(result, "source", None) or {}),
        catalog_counts=result.catalog_counts,
        materialized_views=dict(details.get("materialized_views") or {}),
        database_locale=dict(details.get("database_locale") or {}),
        globals=result.globals_dump.manifest_entry(result.globals_path.name)
        if getattr(result, "globals_dump", None) is not None and result.globals_path is not None else {},
        database_properties=dict(getattr(result, "database_properties", None) or {}),
    )


def manifest_path(backup_path: Path) -> Path:
    return Path(str(backup_path) + MANIFEST_SUFFIX)


def read_manifest(backup_path: Path) -> Optional[BackupManifest]:
    path = manifest_path(backup_path)
    if not path.exists():
        return None
    return BackupManifest.from_json(path.read_text(encoding="utf-8"))
