"""Blocking integrity checks of the backup file on disk. A failure stops the offsite copy and fails the run.

Each check re-reads the file independently of the code that wrote it.
"""


from pathlib import Path

import dagster as dg

from loyalty_ops.defs.backups.history import BACKUP_ASSET_KEY, metadata_values
from loyalty_ops.defs.resources import PostgresTarget
from loyalty_ops.lib.backup import integrity
from loyalty_ops.lib.backup.manifest import read_manifest
from loyalty_ops.lib.pg.tools import ToolError

MIN_SIZE_RATIO = 0.5


def _latest_backup(context: dg.AssetCheckExecutionContext) -> dict:
    entry = context.instance.get_latest_materialization_event(BACKUP_ASSET_KEY)
    if entry is None:
        raise dg.Failure("database_backup has never been materialized; there is nothing to check")
    return metadata_values(entry)


def _fail(message: str, **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR, description=message, metadata=metadata)


@dg.asset_check(asset=BACKUP_ASSET_KEY, blocking=True)
def backup_archive_decompresses(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """The compressed stream is valid to its end (what `gunzip -t` checks) and holds a pg_dump archive."""
    meta = _latest_backup(context)
    verdict = integrity.verify_compressed_stream(Path(meta["path"]))
    if not verdict.ok:
        return _fail(verdict.message, path=meta["path"], decompressed_bytes=verdict.raw_bytes)
    return dg.AssetCheckResult(
        passed=True, description=verdict.message, metadata={"decompressed_bytes": verdict.raw_bytes}
    )


@dg.asset_check(asset=BACKUP_ASSET_KEY, blocking=True)
def backup_checksum_matches(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """The SHA-256 of the file on disk equals the one computed while writing it (and the sidecar's)."""
    meta = _latest_backup(context)
    path = Path(meta["path"])
    if not path.exists():
        return _fail(f"{path} is gone", path=str(path))
    on_disk = integrity.file_sha256(path)
    sidecar = integrity.read_sidecar(path)
    problems = []
    if on_disk != meta["sha256"]:
        problems.append(f"file on disk hashes to {on_disk}, but {meta['sha256']} was computed while writing")
    if sidecar != meta["sha256"]:
        problems.append(f"the sidecar {path.name}.sha256 says {sidecar or 'nothing'}")
    if problems:
        return _fail("; ".join(problems), sha256_on_disk=on_disk, sha256_written=meta["sha256"])
    return dg.AssetCheckResult(passed=True, metadata={"sha256": on_disk})


@dg.asset_check(asset=BACKUP_ASSET_KEY, blocking=True)
def backup_toc_lists_all_tables(context: dg.AssetCheckExecutionContext, postgres: PostgresTarget) -> dg.AssetCheckResult:
    """`pg_restore --list` reads the archive and its table of contents has every table (and its data)
    that the source database had in the dump's snapshot."""
    meta = _latest_backup(context)
    path = Path(meta["path"])
    manifest = read_manifest(path)
    if manifest is None:
        return _fail(f"{path.name}.manifest.json is missing: the source's table list is unknown")
    runner = postgres.tools()
    try:
        proc = runner.start("pg_restore", ["--list"], stdin=True, stdout=True)
    except ToolError as exc:
        return _fail(f"pg_restore could not start: {exc}")
    assert proc.stdin is not None and proc.stdout is not None
    feeder = integrity.start_feeder(path, proc.stdin)
    toc = proc.stdout.read().decode("utf-8", errors="replace")
    code = proc.wait()
    feeder.join()
    if code != 0:
        return _fail(f"pg_restore --list failed with exit code {code}: {proc.stderr_text().strip()[-1500:]}")
    missing = integrity.missing_from_toc(toc, manifest.table_refs())
    entries = sum(1 for line in toc.splitlines() if line and not line.startswith(";"))
    if missing:
        return _fail(
            f"{len(missing)} of {len(manifest.tables)} source tables are missing from the archive: "
            + ", ".join(missing[:20]),
            missing=dg.MetadataValue.json(missing),
            toc_entries=entries,
        )
    return dg.AssetCheckResult(passed=True, metadata={"toc_entries": entries, "tables": len(manifest.tables)})


@dg.asset_check(asset=BACKUP_ASSET_KEY, blocking=True)
def backup_size_plausible(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """The file is not empty and not under half the size of the previous verified backup: a truncated
    dump reported as success is the commonest silent failure of backup tools."""
    meta = _latest_backup(context)
    path = Path(meta["path"])
    size = path.stat().st_size if path.exists() else 0
    previous = meta.get("previous_backup_bytes") or None
    verdict = integrity.size_is_plausible(size, previous, MIN_SIZE_RATIO)
    metadata = {"bytes": size, "previous_backup_bytes": previous or 0}
    if verdict.ratio is not None:
        metadata["ratio_to_previous"] = round(verdict.ratio, 3)
    if not verdict.ok:
        return _fail(verdict.message, **metadata)
    return dg.AssetCheckResult(passed=True, description=verdict.message, metadata=metadata)


BACKUP_CHECKS = [backup_archive_decompresses, backup_checksum_matches, backup_toc_lists_all_tables, backup_size_plausible]
