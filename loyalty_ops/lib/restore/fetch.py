"""Choosing the backup to restore and turning it into a checked archive, with the fallbacks on-call would
take by hand.

- ``latest`` is the newest backup that passed its integrity checks (and its drill, when one ran for it),
  according to the backup history; never simply the newest file. Every newer backup passed over is named in
  the log with the reason. With no history at all (a new ops box), it is the newest backup whose own file
  verifies: ``.sha256`` sidecar and manifest present and the SHA-256 matching.
- When a local file is damaged (its SHA-256 does not match, or its sidecar is missing) and its S3 copy is
  intact, the log says so and the S3 copy is restored; when both are bad, the refusal names both.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from loyalty_ops.lib.formatting import human_bytes
from loyalty_ops.lib.restore.environment import RestoreEnvironment
from loyalty_ops.lib.backup.encryption import AGE_SUFFIX
from loyalty_ops.lib.restore.errors import BackupNotFound, ChecksumMismatch, IncompleteBackup, MissingKey, RestoreRefused
from loyalty_ops.lib.restore.plan import BackupRef
from loyalty_ops.lib.restore.source import (
    MISSING_KEY_HINT,
    Candidate,
    LocatedBackup,
    fetch_backup,
    list_candidates,
    locate_backup,
    locate_local,
    locate_s3,
    release_work_file,
    where_backups_live,
)
from loyalty_ops.lib.restore.archive_passes import PreparedArchive, prepare_archive, stream_archive, verify_archive
from loyalty_ops.lib.restore.space import NotEnoughSpace


@dataclass(frozen=True)
class FetchPlan:
    """How the chosen backup is turned into an archive.

    ``stream``: verify it in one pass and leave it compressed (a ``jobs: 1`` restore streams it into
    pg_restore), instead of decompressing it into a temporary file. ``before_fetch``: called with the backup
    once it is chosen and before anything is downloaded or written (the disk-space check); what it raises
    ends the fetch (``latest`` does not move on to an older backup for it).
    """

    stream: bool = False
    before_fetch: Optional[Callable[[LocatedBackup], None]] = None


@dataclass
class FetchedArchive:
    located: LocatedBackup
    archive: PreparedArchive
    downloaded: Optional[Path]
    timings: dict[str, float]
    skipped: list[str] = field(default_factory=list)  # "<file>: <why>" for each newer backup `latest` passed over
    notes: list[str] = field(default_factory=list)  # how it was chosen, e.g. the S3 copy used for a damaged file

    def cleanup(self) -> None:
        release_work_file(self.archive.path)
        release_work_file(self.downloaded)

    def feed(self) -> Optional[Callable[[Callable[[bytes], None]], int]]:
        """For a streamed archive: what writes it (decompressed again, hashed again) into pg_restore's
        standard input. None when the archive is a decompressed file."""
        if not self.archive.streamed:
            return None
        return lambda write: stream_archive(self.archive, write, filename=self.located.filename)


def _prepare(located: LocatedBackup, env: RestoreEnvironment, plan: Optional[FetchPlan] = None) -> FetchedArchive:
    """Download if needed, hash and decompress (or verify, to stream). Raises :class:`RestoreRefused`."""
    plan = plan or FetchPlan()
    timings: dict[str, float] = {}
    env.log(
        f"backup: {located.where} ({human_bytes(located.size or 0)}), expected SHA-256 {located.expected_sha256} "
        f"from {', '.join(located.checksum_sources)}"
    )
    if located.filename.endswith(AGE_SUFFIX) and not env.identities:  # before anything is downloaded
        raise MissingKey("decrypt", f"{located.filename} is encrypted: {MISSING_KEY_HINT}")
    if plan.before_fetch is not None:
        t0 = time.monotonic()
        plan.before_fetch(located)
        timings["space_check_s"] = time.monotonic() - t0
    t1 = time.monotonic()
    path, downloaded = fetch_backup(
        located, env.scratch_dir, env.s3, on_progress=env.on_progress, progress_interval_s=env.progress_interval_s
    )
    if downloaded:
        timings["download_s"] = time.monotonic() - t1
        env.log(f"downloaded {located.where} in {timings['download_s']:.1f} s")
    try:
        t2 = time.monotonic()
        if plan.stream:
            archive = verify_archive(
                path,
                located.expected_sha256,
                filename=located.filename,
                on_progress=env.on_progress,
                progress_interval_s=env.progress_interval_s,
                identities=tuple(env.identities or ()),
            )
            timings["verify_s"] = time.monotonic() - t2
        else:
            archive = prepare_archive(
                path,
                located.expected_sha256,
                env.archive_dir,
                filename=located.filename,
                on_progress=env.on_progress,
                progress_interval_s=env.progress_interval_s,
                identities=tuple(env.identities or ()),
            )
            timings["verify_decompress_s"] = time.monotonic() - t2
    except BaseException:
        if downloaded:
            release_work_file(path)
        raise
    if archive.streamed:
        env.log(
            f"checksum verified ({archive.sha256}) and the whole archive read ({human_bytes(archive.raw_bytes)}, "
            f"{archive.data_blocks} data blocks to their end markers) in {timings['verify_s']:.1f} s; it will be "
            "streamed into pg_restore without a temporary copy"
        )
        return FetchedArchive(located, archive, path if downloaded else None, timings)
    env.log(
        f"checksum verified ({archive.sha256}); {human_bytes(archive.raw_bytes)} archive decompressed to a private "
        f"temporary file in {timings['verify_decompress_s']:.1f} s"
    )
    return FetchedArchive(located, archive, path if downloaded else None, timings)


def _require_complete(located: LocatedBackup) -> None:
    """Without history, a backup counts only when its file carries everything that proves it."""
    if located.manifest is None:
        raise IncompleteBackup("find backup", f"{located.where} has no manifest (.manifest.json)")
    if not {"sidecar", "object metadata"} & set(located.checksum_sources):
        raise IncompleteBackup("find backup", f"{located.where} has no .sha256 sidecar")


def _fetch_candidate(
    candidate: Candidate, env: RestoreEnvironment, *, require_complete: bool = False, plan: Optional[FetchPlan] = None
) -> FetchedArchive:
    """The local copy if it verifies, else the S3 copy (saying why). Raises :class:`RestoreRefused`."""
    failures: list[tuple[str, RestoreRefused]] = []
    if candidate.local_path is not None:
        try:
            located = locate_local(candidate.local_path)
            if require_complete:
                _require_complete(located)
            return _prepare(located, env, plan)
        except (ChecksumMismatch, IncompleteBackup) as exc:  # damaged or incomplete here; the S3 copy may be whole
            failures.append((f"the local copy {candidate.local_path}", exc))
    s3_key = candidate.s3_key
    if s3_key is None and env.s3 is not None and candidate.local_path is not None:
        s3_key = env.location.key_for(candidate.name)  # where the offsite copy of this file would be
    if s3_key is not None and env.s3 is not None:
        where = env.location.uri_for(s3_key)
        if failures:
            env.warn(f"{failures[0][0]} cannot be used: {failures[0][1].reason}; trying its S3 copy {where}")
        try:
            located = locate_s3(env.s3, env.location, s3_key)
            if require_complete:
                _require_complete(located)
            fetched = _prepare(located, env, plan)
        except (NotEnoughSpace, MissingKey):
            raise
        except RestoreRefused as exc:
            if not failures:
                raise
            failures.append((f"the S3 copy {where}", exc))
        else:
            if failures:
                note = (
                    f"{failures[0][0]} is damaged ({failures[0][1].reason}); restored from the S3 copy {where}, "
                    "which matches its recorded SHA-256"
                )
                env.warn(note)
                fetched.notes.append(note)
            return fetched
    elif failures:
        failures.append(("an S3 copy", RestoreRefused("find backup", "no offsite bucket is configured (LOYALTY_S3_BUCKET)")))
    first = failures[0][1]
    if len(failures) == 1:
        raise first
    detail = "; ".join(f"{where}: {exc.reason}" for where, exc in failures)
    raise type(first)(first.step, f"no intact copy of {candidate.filename}: {detail}")


def fetch_latest(env: RestoreEnvironment, plan: Optional[FetchPlan] = None) -> FetchedArchive:
    """The newest backup that passed its checks (and drill), or without history, whose file verifies."""
    database = env.spec.dbname
    candidates = list_candidates(env.location, database, env.s3)
    if not candidates:
        raise BackupNotFound(
            "find backup", f"there is no backup of {database or 'any database'} in {where_backups_live(env.location, env.s3)}"
        )
    history = env.history
    use_history = history is not None and not history.empty
    if not use_history:
        env.log(
            "latest: this Dagster instance has no backup history (a new ops box?), so the integrity checks of past "
            "backups are unknown: choosing the newest backup whose file verifies (its .sha256 sidecar and manifest "
            "present and its SHA-256 matching)"
        )
    skipped: list[str] = []

    def _skip(filename: str, reason: str) -> None:
        skipped.append(f"{filename}: {reason}")
        env.warn(f"latest: skipping {filename}: {reason}")

    for candidate in candidates:
        chosen_because = "its file verifies"
        if use_history:
            assert history is not None
            verdict = history.verdict(candidate.filename)
            if verdict is None:
                _skip(candidate.filename, "it is not in this instance's backup history, so its integrity checks are unknown")
                continue
            if not verdict.passed:
                _skip(candidate.filename, verdict.reason)
                continue
            chosen_because = verdict.reason
        try:
            fetched = _fetch_candidate(candidate, env, require_complete=not use_history, plan=plan)
        except (NotEnoughSpace, MissingKey):
            raise  # an older backup would not fit either; a missing key is a setting to fix, not a bad backup
        except RestoreRefused as exc:
            _skip(candidate.filename, exc.reason)
            continue
        note = f"latest is {candidate.filename}: {chosen_because}" + (
            f" ({len(skipped)} newer backup(s) skipped)" if skipped else ""
        )
        env.log(note)
        fetched.notes.insert(0, note)
        fetched.skipped = skipped
        return fetched
    raise BackupNotFound(
        "find backup",
        f"no backup of {database} can be restored as 'latest': " + "; ".join(skipped)
        + f". To restore one of them anyway, name it in `backup` (e.g. backup: {candidates[0].filename})",
    )


def fetch_and_verify(ref: BackupRef, env: RestoreEnvironment, plan: Optional[FetchPlan] = None) -> FetchedArchive:
    """Find, download if needed, hash and decompress (or verify, to stream) the backup ``ref`` names.
    Raises :class:`RestoreRefused`."""
    t0 = time.monotonic()
    if ref.kind == "latest":
        fetched = fetch_latest(env, plan)
    elif ref.kind == "file":
        path = Path(ref.value) if Path(ref.value).is_absolute() else env.backup_dir / ref.value
        name = env.location.parse_name(path.name)
        if path.is_file() and name is not None:
            # A damaged local file falls back to its S3 copy; safety backups are never offsite.
            candidate = Candidate(name, local_path=path)
            fetched = _fetch_candidate(candidate, env, plan=plan) if not ref.is_safety else _prepare(locate_local(path), env, plan)
        else:
            fetched = _prepare(locate_backup(ref, env.location, database=env.spec.dbname, client=env.s3), env, plan)
    else:
        fetched = _prepare(locate_backup(ref, env.location, database=env.spec.dbname, client=env.s3), env, plan)
    fetched.timings["find_s"] = time.monotonic() - t0 - sum(fetched.timings.values())
    return fetched
