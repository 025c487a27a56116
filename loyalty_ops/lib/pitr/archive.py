"""The WAL archive as it really is: what the database server says (``pg_stat_archiver``, the segments still
waiting in ``pg_wal/archive_status``) and what the bucket holds (every segment since the last base backup,
no gap), judged against the allowed lag. The lag is the live RPO: how old the oldest WAL not yet in the
bucket is."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Optional

from loyalty_ops.lib.pitr.location import PitrLocation

SEGMENT_RE = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
# What the engine appends to an archived file's name when it compresses it.
COMPRESSION_SUFFIXES = ("", ".gz", ".bz2", ".xz", ".snappy", ".zst", ".lz4")


def wal_file_name(key: str) -> str:
    """The archived file's own name: a segment's 24 hex digits without the compression suffix; anything else
    (``.backup`` labels, ``.partial`` and ``.history`` files) keeps its full name and is never taken for a segment."""
    base = key.rsplit("/", 1)[-1]
    if SEGMENT_RE.match(base[:24]) and base[24:] in COMPRESSION_SUFFIXES:
        return base[:24]
    return base


def segments_per_log(segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> int:
    return 0x100000000 // segment_bytes


def segment_parts(name: str, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> Optional[tuple[int, int]]:
    """(timeline, absolute segment number) of a WAL segment file name, None for anything else."""
    found = SEGMENT_RE.match(name)
    if not found:
        return None
    tli, log_id, seg = (int(part, 16) for part in found.groups())
    return tli, log_id * segments_per_log(segment_bytes) + seg


def segment_name(timeline: int, number: int, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> str:
    per_log = segments_per_log(segment_bytes)
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


@dataclass(frozen=True)
class WalObject:
    name: str  # segment name without compression suffix, or the history/backup-label file name
    key: str
    size: int
    last_modified: datetime


def wal_objects(s3_client, location: PitrLocation, since: Optional[str] = None) -> list[WalObject]:
    """Every file under the server's ``wals/`` prefix (paginated listing); with ``since`` (a segment name),
    only from that segment on (keys sort by timeline, then segment)."""
    out = []
    paginator = s3_client.get_paginator("list_objects_v2")
    extra = {"StartAfter": f"{location.wal_prefix}{since[:16]}/{since[:-1]}"} if since and SEGMENT_RE.match(since) else {}
    for page in paginator.paginate(Bucket=location.bucket, Prefix=location.wal_prefix, **extra):
        for item in page.get("Contents", []):
            out.append(WalObject(wal_file_name(item["Key"]), item["Key"], int(item["Size"]), item["LastModified"]))
    return out


def segment_in_bucket(s3_client, location: PitrLocation, segment: str) -> Optional[WalObject]:
    """The archived object of ``segment`` (any compression suffix), None when it is not there."""
    prefix = f"{location.wal_prefix}{segment[:16]}/{segment}"
    response = s3_client.list_objects_v2(Bucket=location.bucket, Prefix=prefix)
    for item in response.get("Contents", []):
        if item["Key"][len(prefix):] in COMPRESSION_SUFFIXES:
            return WalObject(segment, item["Key"], int(item["Size"]), item["LastModified"])
    return None


@dataclass(frozen=True)
class BucketWal:
    """The bucket's side: the newest segment and the segments missing since ``since`` (a base backup's
    begin WAL) on that timeline and later ones."""

    segments: int
    newest: Optional[WalObject]
    since: Optional[str]
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.missing


def bucket_wal(objects: Iterable[WalObject], since: Optional[str], segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> BucketWal:
    segments = [o for o in objects if segment_parts(o.name, segment_bytes) is not None]
    if not segments:
        return BucketWal(0, None, since, (since,) if since else ())
    parts = {o.key: segment_parts(o.name, segment_bytes) for o in segments}
    newest = max(segments, key=lambda o: parts[o.key])  # type: ignore[arg-type,return-value]
    start = segment_parts(since, segment_bytes) if since else None
    by_timeline: dict[int, set[int]] = {}
    for o in segments:
        tli, number = parts[o.key]  # type: ignore[misc]
        by_timeline.setdefault(tli, set()).add(number)
    missing: list[str] = []
    for tli in sorted(by_timeline):
        if start is not None and tli < start[0]:
            continue
        numbers = by_timeline[tli]
        first = start[1] if start is not None and tli == start[0] else min(numbers)
        missing += [segment_name(tli, n, segment_bytes) for n in range(first, max(numbers) + 1) if n not in numbers]
        if start is not None and tli == start[0] and first > max(numbers):
            missing.append(segment_name(tli, first, segment_bytes))
    return BucketWal(len(segments), newest, since, tuple(missing[:50]))


@dataclass(frozen=True)
class ServerArchiver:
    """The server's side, read in one query."""

    archive_mode: str
    wal_level: str
    archive_timeout_s: int
    archived_count: int
    last_archived_wal: Optional[str]
    last_archived_time: Optional[datetime]
    failed_count: int
    last_failed_wal: Optional[str]
    last_failed_time: Optional[datetime]
    current_wal: str
    segment_bytes: int
    ready_segments: int
    oldest_ready_time: Optional[datetime]
    now: datetime

    @property
    def failing(self) -> bool:
        """The last attempt failed (the last failure is newer than the last success)."""
        if self.last_failed_time is None:
            return False
        return self.last_archived_time is None or self.last_failed_time > self.last_archived_time


ARCHIVER_SQL = """
SELECT current_setting('archive_mode'), current_setting('wal_level'),
       (SELECT setting::int FROM pg_settings WHERE name = 'archive_timeout'),
       archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time,
       pg_walfile_name(pg_current_wal_lsn()), (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), now()
FROM pg_stat_archiver
"""
READY_SQL = """
SELECT count(*), min(modification) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'
"""


def read_server_archiver(conn) -> ServerArchiver:
    """``pg_stat_archiver`` and the segments waiting in ``archive_status`` (needs superuser or pg_monitor)."""
    row = conn.execute(ARCHIVER_SQL).fetchone()
    ready, oldest = conn.execute(READY_SQL).fetchone()
    return ServerArchiver(
        archive_mode=row[0], wal_level=row[1], archive_timeout_s=int(row[2] or 0), archived_count=int(row[3]),
        last_archived_wal=row[4], last_archived_time=row[5], failed_count=int(row[6]), last_failed_wal=row[7],
        last_failed_time=row[8], current_wal=row[9], segment_bytes=int(row[10]), ready_segments=int(ready or 0),
        oldest_ready_time=oldest, now=row[11],
    )


@dataclass(frozen=True)
class ArchiveHealth:
    lag_s: float
    max_lag_s: float
    lag_ok: bool
    archiving_ok: bool
    bucket_ok: bool
    problems: tuple[str, ...] = field(default=())

    @property
    def healthy(self) -> bool:
        return self.lag_ok and self.archiving_ok and self.bucket_ok


def archive_lag_s(server: ServerArchiver) -> float:
    """How old the oldest WAL not yet in the bucket is: the oldest segment waiting to be archived, else 0
    (the segment being written is bounded by archive_timeout, which the settings check)."""
    if server.oldest_ready_time is None:
        return 0.0
    return max((server.now - server.oldest_ready_time).total_seconds(), 0.0)


def judge(server: ServerArchiver, bucket: BucketWal, max_lag_s: float) -> ArchiveHealth:
    problems = []
    lag = archive_lag_s(server)
    lag_ok = lag <= max_lag_s
    if not lag_ok:
        problems.append(f"the oldest WAL not in the bucket is {lag:.0f} s old (limit {max_lag_s:.0f} s); "
                        f"{server.ready_segments} segment(s) wait in pg_wal")
    archiving_ok = server.archive_mode in ("on", "always") and server.wal_level in ("replica", "logical") and not server.failing
    if server.archive_mode not in ("on", "always"):
        problems.append(f"archive_mode is {server.archive_mode!r} on the server: WAL is not archived at all")
    if server.wal_level not in ("replica", "logical"):
        problems.append(f"wal_level is {server.wal_level!r}: it must be replica or logical")
    if server.failing:
        problems.append(f"archive_command is failing: {server.failed_count} failure(s), the last on {server.last_failed_wal} at "
                        f"{_iso(server.last_failed_time)} (last success {server.last_archived_wal or 'never'})")
    bucket_ok = bucket.complete
    if bucket.missing:
        problems.append(f"{len(bucket.missing)} segment(s) missing from the bucket since {bucket.since}: "
                        + ", ".join(bucket.missing[:5]))
    if server.last_archived_wal and bucket.newest is not None and SEGMENT_RE.match(server.last_archived_wal):
        size = server.segment_bytes
        if (segment_parts(bucket.newest.name, size) or (0, 0)) < (segment_parts(server.last_archived_wal, size) or (0, 0)):
            bucket_ok = False
            problems.append(f"the server archived {server.last_archived_wal} but the newest segment in the bucket is "
                            f"{bucket.newest.name}")
    elif server.last_archived_wal and bucket.newest is None:
        bucket_ok = False
        problems.append(f"the server archived {server.last_archived_wal} but the bucket holds no WAL segment")
    return ArchiveHealth(lag, max_lag_s, lag_ok, archiving_ok, bucket_ok, tuple(problems))


def _iso(value: Optional[datetime]) -> str:
    return value.astimezone(timezone.utc).isoformat(timespec="seconds") if value else "never"
