"""Blocking integrity checks of the backup file on disk. A failure stops the offsite copy and fails the run.

The five checks are evaluated from one read of the file as stored (hash, decompression to the end, a walk of
the whole archive inside, and ``pg_restore --list`` fed from the same stream), independently of the code that
wrote it. The backup step does that read while it writes the file, reading it back from disk behind the
writer (``lib/backup/readback.py``), and records the verdicts with the file's SHA-256; here the file on disk
is hashed again, and the recorded verdicts are reported only when it still has exactly those bytes. Any
other file (changed, cut or damaged since, or a backup without that record) is read whole here.
Each run checks its own backup: the file its own ``database_backup`` step wrote, not simply the newest one
(another run may have written a newer one meanwhile).
"""

from pathlib import Path
from typing import Iterator, Optional

import dagster as dg

from loyalty_ops.defs.backups.history import BACKUP_ASSET_KEY, INTEGRITY_CHECK_NAMES, metadata_values
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage, PostgresTarget
from loyalty_ops.lib.backup import integrity
from loyalty_ops.lib.backup.manifest import read_manifest
from loyalty_ops.lib.backup.offsite import abort_pending_upload
from loyalty_ops.lib.pg.tools import ToolError

MIN_SIZE_RATIO = 0.5

CHECK_DESCRIPTIONS = {
    "backup_archive_decompresses": "The compressed stream is valid to its end (what `gunzip -t` checks) and "
    "holds a pg_dump custom-format archive.",
    "backup_archive_complete": "The whole archive was read: every data block its table of contents promises "
    "is present and complete to its end marker, and nothing follows the last one. `pg_restore --list` reads "
    "only the table of contents, so an archive cut short (pg_dump exited 0, a pipe broke) would pass it.",
    "backup_checksum_matches": "The SHA-256 of the file on disk equals the one computed while writing it "
    "(and the `.sha256` sidecar's).",
    "backup_toc_lists_all_tables": "`pg_restore --list` reads the archive and its table of contents has every "
    "table (and its data) the source had in the dump's snapshot.",
    "backup_size_plausible": "The file is not empty and not under half the size of the previous verified "
    "backup: a truncated dump reported as success is the commonest silent failure of backup tools. After a "
    "legitimate purge, relaunch the backup with `accept_size_change: true` to accept the new size.",
}


SOURCE_LAG_CHECK = "backup_source_lag_within_limit"
SOURCE_LAG_DESCRIPTION = (
    "When the backup was dumped from a standby (LOYALTY_BACKUP_SOURCE_HOST), the standby was no further behind its "
    "primary when the dump's snapshot was taken than LOYALTY_BACKUP_SOURCE_MAX_LAG_S: a backup of a lagging standby "
    "misses the primary's latest transactions. Dumped from the primary, it passes. A failure blocks (and aborts) the "
    "offsite copy."
)


def _result(name: str, passed: bool, description: str, **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name,
        asset_key=BACKUP_ASSET_KEY,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata=metadata,
    )


@dg.multi_asset_check(
    name="backup_integrity_checks",
    specs=[
        dg.AssetCheckSpec(name, asset=BACKUP_ASSET_KEY, blocking=True, description=description)
        for name, description in {**CHECK_DESCRIPTIONS, SOURCE_LAG_CHECK: SOURCE_LAG_DESCRIPTION}.items()
    ],
    description="Verifies the run's backup file on disk: stream validity, the whole archive, checksum, table of "
    "contents and size. The backup step reads the file back from disk while writing it; these checks hash the "
    "file again and use that read's verdicts only while the file has exactly those bytes, else they read the "
    "whole file. Any failure blocks (and aborts) the offsite copy.",
)
def backup_integrity_checks(
    context: dg.AssetCheckExecutionContext, postgres: PostgresTarget, backup_storage: BackupStorage, offsite: OffsiteStorage
) -> Iterator[dg.AssetCheckResult]:
    entry = backup_of_run(context.instance, context.run.run_id) or context.instance.get_latest_materialization_event(
        BACKUP_ASSET_KEY
    )
    if entry is None:
        raise dg.Failure("database_backup has never been materialized; there is nothing to check")
    meta = metadata_values(entry)
    path = Path(meta["path"])
    manifest = read_manifest(path) if path.exists() else None

    toc_process = None
    toc_start_error = None
    if path.exists() and path.name.endswith(".age") and not backup_storage.age_identity_file:
        # Encrypted and no key on this box: the plaintext was checked in the backup pass (sealed_checks).
        results = list(sealed_results(path, meta, manifest))
        results.append(source_lag_result(meta, backup_storage))
        _abort_pending_upload_on_failure(context, results, meta, path, backup_storage, offsite)
        yield from results
        return
    record = meta.get("read_back_checks") or {}
    if path.exists() and record and not path.name.endswith(".age"):
        sha = integrity.file_sha256(path)
        if sha == record.get("compressed_sha256"):
            try:
                toc = integrity.list_toc(path, postgres.tools().start("pg_restore", ["--list"], stdin=True, stdout=True))
            except ToolError as exc:
                toc = (None, f"pg_restore could not start: {exc}")
            results = list(read_back_results(path, meta, manifest, record, sha, toc))
            results.append(source_lag_result(meta, backup_storage))
            _abort_pending_upload_on_failure(context, results, meta, path, backup_storage, offsite)
            yield from results
            return
        context.log.warning(
            f"{path.name} no longer has the SHA-256 it had when it was read back while being written "
            f"({record.get('compressed_sha256')}; now {sha}): reading the whole file again"
        )
    if path.exists():
        try:
            toc_process = postgres.tools().start("pg_restore", ["--list"], stdin=True, stdout=True)
        except ToolError as exc:
            toc_start_error = f"pg_restore could not start: {exc}"
        unseal = None
        if path.name.endswith(".age"):
            from loyalty_ops.lib.backup.encryption import AgeStream

            unseal = AgeStream(identities=backup_storage.identities("checking the backup's plaintext"))
        inspection = integrity.inspect_archive(path, toc_process, unseal=unseal)
    else:
        inspection = None

    results = []
    if inspection is None:
        for name in INTEGRITY_CHECK_NAMES:
            results.append(_result(name, False, f"{path} does not exist any more", path=str(path)))
    else:
        verdict = inspection.stream
        results.append(
            _result("backup_archive_decompresses", verdict.ok, verdict.message, decompressed_bytes=verdict.raw_bytes)
        )
        results.append(_archive_complete_result(path, inspection))

        results.append(_checksum_result(path, inspection.sha256, meta))

        if manifest is None:
            results.append(_result("backup_toc_lists_all_tables", False, f"{path.name}.manifest.json is missing: "
                                   "the source's table list is unknown"))
        elif toc_start_error or inspection.toc_error:
            results.append(_result("backup_toc_lists_all_tables", False, toc_start_error or inspection.toc_error))
        else:
            missing = integrity.missing_from_toc(inspection.toc_text or "", manifest.table_refs())
            entries = integrity.toc_entry_count(inspection.toc_text)
            if missing:
                results.append(_result(
                    "backup_toc_lists_all_tables", False,
                    f"{len(missing)} of {len(manifest.tables)} source tables are missing from the archive: "
                    + ", ".join(missing[:20]),
                    missing=dg.MetadataValue.json(missing), toc_entries=entries,
                ))
            else:
                results.append(_result("backup_toc_lists_all_tables", True,
                                       f"all {len(manifest.tables)} tables and their data are in the archive",
                                       toc_entries=entries, tables=len(manifest.tables)))

        results.append(_size_result(inspection.file_bytes, meta))
    results.append(source_lag_result(meta, backup_storage))
    _abort_pending_upload_on_failure(context, results, meta, path, backup_storage, offsite)
    yield from results


def read_back_results(
    path: Path, meta: dict, manifest, record: dict, sha: str, toc: tuple[Optional[str], Optional[str]]
) -> Iterator[dg.AssetCheckResult]:
    """The five checks of a backup whose file was read back from disk as it was written (``read_back_checks``),
    and which still hashes to what that read saw (``sha``, just computed over the whole file on disk).
    ``toc`` is ``pg_restore --list`` of the file now (``integrity.list_toc``): its text, or its error."""
    note = f"read back from the file on disk as it was written; the file still has those bytes (SHA-256 {sha})"
    yield _result("backup_archive_decompresses", bool(record["stream_ok"]), f"{record['stream_message']}; {note}",
                  decompressed_bytes=int(record.get("decompressed_bytes") or 0), read_back=True)
    if record["archive_complete"]:
        yield _result(
            "backup_archive_complete", True, f"{record['archive_message']}; {note}",
            data_blocks=int(record["data_blocks"]), toc_entries=int(record.get("archive_toc_entries") or 0),
            archive_bytes=int(record.get("archive_bytes") or 0), archive_version=str(record.get("archive_version") or ""),
            verify_seconds=float(record.get("seconds") or 0.0), read_back=True,
        )
    else:
        yield _result("backup_archive_complete", False, _incomplete_text(path, record["archive_message"]),
                      verify_seconds=float(record.get("seconds") or 0.0), read_back=True)
    yield _checksum_result(path, sha, meta)
    toc_text, toc_error = toc
    missing = integrity.missing_from_toc(toc_text or "", manifest.table_refs()) if manifest is not None else []
    entries = integrity.toc_entry_count(toc_text)
    if manifest is None:
        yield _result("backup_toc_lists_all_tables", False, f"{path.name}.manifest.json is missing: the source's "
                      "table list is unknown")
    elif toc_error:
        yield _result("backup_toc_lists_all_tables", False, toc_error)
    elif missing:
        yield _result("backup_toc_lists_all_tables", False, f"{len(missing)} of {len(manifest.tables)} source tables are "
                      "missing from the archive: " + ", ".join(missing[:20]),
                      missing=dg.MetadataValue.json(missing), toc_entries=entries)
    else:
        yield _result("backup_toc_lists_all_tables", True, f"all {len(manifest.tables)} tables and their data are in "
                      "the archive", toc_entries=entries, tables=len(manifest.tables))
    yield _size_result(path.stat().st_size, meta)


def _abort_pending_upload_on_failure(context, results, meta: dict, path: Path, backup_storage, offsite) -> None:
    failed = [r.check_name for r in results if not r.passed]
    location = backup_storage.location(offsite)
    if failed and meta.get("pending_upload_id") and location.offsite_configured:
        abort_pending_upload(offsite.client(), location.bucket, meta["pending_upload_key"], meta["pending_upload_id"])
        context.log.error(
            f"integrity checks failed ({', '.join(failed)}): aborted the pending offsite upload of {path.name}; "
            "nothing was copied offsite"
        )


def sealed_results(path: Path, meta: dict, manifest) -> Iterator[dg.AssetCheckResult]:
    """The five checks of an encrypted backup when the private key is not on this machine: the file on disk
    is hashed and its age header read; stream, archive and table of contents are the verdicts of the backup
    pass, taken on the compressed stream just before it was encrypted (``in_pass_checks``)."""
    from loyalty_ops.lib.backup.encryption import AGE_MAGIC

    record = meta.get("in_pass_checks") or {}
    with open(path, "rb") as handle:
        is_age = handle.read(len(AGE_MAGIC)) == AGE_MAGIC
    sha = integrity.file_sha256(path)
    note = "checked in the backup pass before encryption (no LOYALTY_BACKUP_AGE_IDENTITY_FILE here to read the file)"
    if not record:
        for name in INTEGRITY_CHECK_NAMES:
            if name not in ("backup_checksum_matches", "backup_size_plausible"):
                yield _result(name, False, f"{path.name} is encrypted and its backup pass recorded no plaintext checks")
    else:
        yield _result(
            "backup_archive_decompresses", bool(record["stream_ok"]) and is_age,
            (record["stream_message"] if is_age else f"{path.name} does not start with an age header") + f"; {note}",
            encrypted=True,
        )
        yield _result("backup_archive_complete", bool(record["archive_complete"]), f"{record['archive_message']}; {note}",
                      data_blocks=int(record.get("data_blocks") or 0), encrypted=True)
        missing = list(record.get("missing_tables") or [])
        toc_ok = not missing and not record.get("toc_error") and manifest is not None
        yield _result(
            "backup_toc_lists_all_tables", toc_ok,
            record.get("toc_error") or (f"{len(missing)} source tables are missing from the archive: " + ", ".join(missing[:20])
                                        if missing else f"all {len(manifest.tables) if manifest else 0} tables and their data are in the archive; {note}"),
            toc_entries=int(record.get("toc_entries") or 0), encrypted=True,
        )
    yield _checksum_result(path, sha, meta, "(of the encrypted file) ")
    yield _size_result(path.stat().st_size, meta)


def backup_of_run(instance: dg.DagsterInstance, run_id: str) -> Optional[dg.EventLogEntry]:
    """The backup materialized by this run (None when the check runs on its own, outside a backup run)."""
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    mine = [e for e in entries if e.asset_materialization and e.asset_materialization.asset_key == BACKUP_ASSET_KEY]
    return mine[-1] if mine else None


def _archive_complete_result(path: Path, inspection: integrity.ArchiveInspection) -> dg.AssetCheckResult:
    summary = inspection.archive
    if summary is None:
        return _result(
            "backup_archive_complete", False, _incomplete_text(path, str(inspection.archive_error)),
            verify_seconds=round(inspection.seconds, 3),
        )
    return _result(
        "backup_archive_complete",
        True,
        f"read to the end: {summary.data_blocks} of {summary.data_blocks} data blocks complete, "
        f"{len(summary.entries)} TOC entries, {summary.archive_bytes} bytes of archive (format {summary.version})",
        data_blocks=summary.data_blocks,
        toc_entries=len(summary.entries),
        archive_bytes=summary.archive_bytes,
        archive_version=summary.version,
        verify_seconds=round(inspection.seconds, 3),
    )


def _checksum_result(path: Path, sha: str, meta: dict, what: str = "") -> dg.AssetCheckResult:
    """backup_checksum_matches from the SHA-256 of the whole file on disk (``sha``, just computed)."""
    sidecar = integrity.read_sidecar(path)
    problems = [p for p in (
        f"the file on disk hashes to {sha}, but {meta['sha256']} was computed while writing" if sha != meta["sha256"] else "",
        f"the sidecar {path.name}.sha256 says {sidecar or 'nothing'}" if sidecar != meta["sha256"] else "",
    ) if p]
    return _result("backup_checksum_matches", not problems, "; ".join(problems) or f"sha256 {sha} {what}matches what "
                   "was written and the sidecar", sha256_on_disk=sha, sha256_written=meta["sha256"])


def _incomplete_text(path: Path, why: str) -> str:
    return (
        f"{path.name}: {why}. The backup is not restorable as a whole, so it is not "
        "copied offsite and does not count as a good backup (restore `latest` and retention skip it). Relaunch "
        "nightly_backup_job; if it fails again, read pg_dump's lines in this run's log and check the free space "
        "of LOYALTY_BACKUP_DIR."
    )


ACCEPT_SIZE_HINT = (
    "If the database legitimately shrank (a large purge), accept the new size once: launch nightly_backup_job "
    "with `ops: {database_backup: {config: {accept_size_change: true}}}`; later backups compare with this one."
)


def _size_result(size: int, meta: dict) -> dg.AssetCheckResult:
    previous = meta.get("previous_backup_bytes") or None
    verdict = integrity.size_is_plausible(size, previous, MIN_SIZE_RATIO)
    accepted = bool(meta.get("accept_size_change"))
    size_meta = {"bytes": size, "previous_backup_bytes": previous or 0, "accept_size_change": accepted}
    if verdict.ratio is not None:
        size_meta["ratio_to_previous"] = round(verdict.ratio, 3)
    if verdict.ok:
        return _result("backup_size_plausible", True, verdict.message, **size_meta)
    if accepted and size > 0:
        return _result(
            "backup_size_plausible",
            True,
            f"{verdict.message}; accepted for this run by accept_size_change: true (a legitimate shrink)",
            **size_meta,
        )
    return _result("backup_size_plausible", False, f"{verdict.message}. {ACCEPT_SIZE_HINT}", **size_meta)


def source_lag_result(meta: dict, backup_storage: BackupStorage) -> dg.AssetCheckResult:
    """backup_source_lag_within_limit, from the lag the backup recorded in its snapshot (metadata)."""
    limit = float(meta.get("source_max_lag_s") or backup_storage.source_max_lag_s)
    lag = meta.get("source_lag_s")
    if not meta.get("source_standby"):
        passed, text = True, "dumped from the primary (not a standby): no replication lag"
    elif lag is None:
        passed, text = False, (
            "dumped from a standby that could not tell how far behind its primary it was (it had replayed nothing "
            "yet): check replication on LOYALTY_BACKUP_SOURCE_HOST"
        )
    elif float(lag) > limit:
        passed, text = False, (
            f"dumped from a standby {float(lag):.1f} s behind its primary, over the {limit:g} s limit "
            "(LOYALTY_BACKUP_SOURCE_MAX_LAG_S): the backup misses the primary's latest transactions. Check the "
            "standby's replication, or dump the primary (unset LOYALTY_BACKUP_SOURCE_HOST) and relaunch"
        )
    else:
        passed, text = True, f"dumped from a standby {float(lag):.1f} s behind its primary (limit {limit:g} s)"
    numbers = {"source_standby": bool(meta.get("source_standby")), "source_max_lag_s": limit}
    if lag is not None:
        numbers["source_lag_s"] = float(lag)
    return _result(SOURCE_LAG_CHECK, passed, text, **numbers)


BACKUP_CHECKS = [backup_integrity_checks]
