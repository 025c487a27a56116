"""Will a restore fit? Computed before anything is downloaded, decompressed or created.

A restore writes in up to four places: the download of an S3 copy (the compressed size), the decompressed
archive (``pg_restore -j`` needs a seekable file: the manifest's ``raw_bytes``), the safety backup of a
``replace`` (about the compressed size again), and the new database on the server's data volume (about the
source database's size). Each need is placed on its filesystem; needs that share a filesystem are added up,
and the restore is refused, with the numbers, when any filesystem has less free space than it needs.

The server's data volume is looked at only when it is visible from here: the server must be on this machine
(a Unix socket or a loopback address) and its ``data_directory`` must hold the ``postmaster.pid`` of that
very server (same port, same start time). Otherwise the log says it could not be checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import psycopg

from loyalty_ops.lib.formatting import human_bytes, markdown_table
from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.restore.database import admin_connection
from loyalty_ops.lib.restore.environment import RestoreEnvironment
from loyalty_ops.lib.restore.errors import RestoreRefused
from loyalty_ops.lib.restore.source import LocatedBackup

# Free space a filesystem keeps after the restore: the restore must not leave it full to the last block.
# 2 % of the filesystem, at least 64 MB, at most 1 GB (and never more than a tenth of a small filesystem).
HEADROOM_FRACTION = 0.02
HEADROOM_MIN_BYTES = 64 * 1024 * 1024
HEADROOM_MAX_BYTES = 1024 * 1024 * 1024
# A restored database per byte of COPY data in the archive, when the source database's size is unknown
# (heap pages plus rebuilt indexes). The 1.9 GB sample database holds 974 MB of COPY data (2.0x); tiny
# databases more, where indexes and catalogs dominate. Rounded up; the log marks the number as an estimate.
DATABASE_PER_ARCHIVE_BYTE = 2.5
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class NotEnoughSpace(RestoreRefused):
    """A filesystem the restore writes to has less free space than the restore needs."""


@dataclass(frozen=True)
class SpaceNeed:
    what: str  # "decompressed archive", "download", "safety backup", "restored database"
    path: Path  # where it is written (a directory)
    bytes: int
    estimated: bool = False  # True: an estimate (the number it is based on is unknown)
    basis: str = ""  # where the number comes from, for the log


@dataclass(frozen=True)
class Volume:
    """One filesystem, as seen through the first directory that needs room on it."""

    path: Path
    device: int
    free_bytes: int
    total_bytes: int
    needs: tuple[SpaceNeed, ...]

    @property
    def needed_bytes(self) -> int:
        return sum(n.bytes for n in self.needs)

    @property
    def headroom_bytes(self) -> int:
        if not self.needed_bytes:
            return 0
        wanted = max(HEADROOM_MIN_BYTES, int(self.total_bytes * HEADROOM_FRACTION))
        return min(wanted, HEADROOM_MAX_BYTES, self.total_bytes // 10)

    @property
    def fits(self) -> bool:
        return self.needed_bytes + self.headroom_bytes <= self.free_bytes

    def describe(self) -> str:
        parts = " + ".join(f"{n.what} {human_bytes(n.bytes)}{' (estimated)' if n.estimated else ''}" for n in self.needs)
        return (
            f"{self.path}: needs {human_bytes(self.needed_bytes)} ({parts}) plus {human_bytes(self.headroom_bytes)} "
            f"headroom, {human_bytes(self.free_bytes)} free"
        )


@dataclass
class SpaceReport:
    volumes: list[Volume] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # needs that could not be placed, with why

    @property
    def fits(self) -> bool:
        return all(v.fits for v in self.volumes)

    def summary(self) -> str:
        lines = [("fits" if v.fits else "DOES NOT FIT") + ": " + v.describe() for v in self.volumes]
        lines += [f"not checked: {text}" for text in self.unchecked]
        return "; ".join(lines) if lines else "nothing to check"

    def table(self) -> str:
        """A markdown table for the UI: one row per filesystem."""
        rows = [
            (str(v.path), human_bytes(v.needed_bytes), human_bytes(v.headroom_bytes), human_bytes(v.free_bytes), "ok" if v.fits else "NO ROOM")
            for v in self.volumes
        ]
        return markdown_table(["filesystem (first directory)", "needed", "headroom", "free", ""], rows, "lrrrl")

    def as_metadata(self) -> dict:
        return {
            "fits": self.fits,
            "volumes": [
                {
                    "path": str(v.path),
                    "needed_bytes": v.needed_bytes,
                    "headroom_bytes": v.headroom_bytes,
                    "free_bytes": v.free_bytes,
                    "needs": {n.what: n.bytes for n in v.needs},
                    "estimated": [n.what for n in v.needs if n.estimated],
                }
                for v in self.volumes
            ],
            "unchecked": list(self.unchecked),
        }


def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing parent: a directory that is created later lives on its parent's filesystem."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def measure(needs: Iterable[SpaceNeed]) -> SpaceReport:
    """Place each need on its filesystem (``st_dev``) and add up the needs that share one."""
    report = SpaceReport()
    grouped: dict[int, list[SpaceNeed]] = {}
    first_path: dict[int, Path] = {}
    for need in needs:
        if need.bytes <= 0:
            continue
        where = existing_ancestor(need.path)
        try:
            device = os.stat(where).st_dev
        except OSError as exc:
            report.unchecked.append(f"{need.what} in {need.path}: {exc.strerror or exc}")
            continue
        grouped.setdefault(device, []).append(need)
        first_path.setdefault(device, Path(need.path))
    for device, device_needs in grouped.items():
        stats = os.statvfs(existing_ancestor(first_path[device]))
        report.volumes.append(
            Volume(
                path=first_path[device],
                device=device,
                free_bytes=stats.f_bavail * stats.f_frsize,
                total_bytes=stats.f_blocks * stats.f_frsize,
                needs=tuple(device_needs),
            )
        )
    return report


def refuse_unless_fits(report: SpaceReport, *, advice: str = "") -> None:
    """Raise :class:`NotEnoughSpace` naming every filesystem that is too small, with the numbers."""
    short = [v for v in report.volumes if not v.fits]
    if not short:
        return
    detail = "; ".join(v.describe() for v in short)
    raise NotEnoughSpace("check space", f"not enough free space for this restore: {detail}. {advice}".rstrip())


# -- the server's side ---------------------------------------------------------------------------------


def is_local_host(host: Optional[str]) -> bool:
    """A Unix socket (no host, or a directory) or a loopback address: the server may be on this machine."""
    if not host:
        return True
    return host.startswith("/") or host.startswith("@") or host in LOOPBACK_HOSTS


@dataclass(frozen=True)
class DataVolume:
    """Where the server keeps a new database, when this machine can see it."""

    path: Optional[Path]  # the data directory, or a tablespace's location; None: not visible from here
    why_not: str = ""


def server_data_volume(conn: psycopg.Connection, spec: ConnectionSpec) -> DataVolume:
    """The directory new databases go to on this server (the default tablespace), if it is on this machine.

    Proven local only when the directory's ``postmaster.pid`` names this server's port and start time: a
    same-named directory of another cluster (or of a server in a container) is never taken for it.
    """
    if not is_local_host(spec.host):
        return DataVolume(None, f"the server ({spec.host}) is not on this machine")
    try:
        row = conn.execute(
            """
            SELECT current_setting('data_directory'), current_setting('port'),
                   floor(extract(epoch FROM pg_postmaster_start_time()))::bigint,
                   (SELECT coalesce(nullif(pg_tablespace_location(t.oid), ''), '')
                      FROM pg_tablespace t WHERE t.spcname = coalesce(nullif(current_setting('default_tablespace'), ''), 'pg_default'))
            """
        ).fetchone()
    except psycopg.Error as exc:
        return DataVolume(None, f"the server does not show its data_directory to this role ({str(exc).strip().splitlines()[0]})")
    data_directory, port, started, tablespace = row
    pid_file = Path(data_directory) / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
    except OSError as exc:
        return DataVolume(None, f"{pid_file} is not readable here ({exc.strerror or exc}): the server is not on this machine or not visible to this user")
    # postmaster.pid: pid, data directory, start time (epoch), port, socket directory, ...
    if len(lines) < 4 or lines[3].strip() != str(port) or abs(int(lines[2].strip() or 0) - int(started)) > 1:
        return DataVolume(None, f"{pid_file} belongs to another server than the one connected to")
    return DataVolume(Path(tablespace) if tablespace else Path(data_directory) / "base")


def database_size(conn: psycopg.Connection, name: str) -> Optional[int]:
    row = conn.execute(
        "SELECT pg_database_size(oid) FROM pg_database WHERE datname = %s AND datallowconn", (name,)
    ).fetchone()
    return int(row[0]) if row else None


def expected_database_bytes(source_size: Optional[int], archive_raw_bytes: Optional[int]) -> tuple[int, bool, str]:
    """The restored database's expected size: the source database's size when known, else an estimate
    from the archive. Returns (bytes, estimated, basis)."""
    if source_size:
        return source_size, False, "the source database's current size (pg_database_size)"
    if archive_raw_bytes:
        estimate = int(archive_raw_bytes * DATABASE_PER_ARCHIVE_BYTE)
        return estimate, True, f"{DATABASE_PER_ARCHIVE_BYTE:g} x the archive's size (the source database's size is unknown)"
    return 0, True, "unknown (no manifest and no source database)"


# -- a restore's needs ----------------------------------------------------------------------------------


def _source_size(env: RestoreEnvironment, database: str) -> tuple[Optional[int], str]:
    """The source database's size on the server the backups come from; (None, why) when it cannot be read."""
    spec = env.source_spec or env.spec
    try:
        with admin_connection(spec) as conn:
            size = database_size(conn, database)
    except (ConnectionError, psycopg.Error) as exc:
        return None, f"the source server is not reachable ({str(exc).splitlines()[0]})"
    return size, "" if size else f"database {database} does not exist on the source server"


def restore_space_needs(
    env: RestoreEnvironment, located: LocatedBackup, *, stream: bool, safety_backup: bool
) -> tuple[list[SpaceNeed], list[str]]:
    """What a restore of ``located`` will write where, and what could not be placed (with why)."""
    needs: list[SpaceNeed] = []
    unchecked: list[str] = []
    manifest = located.manifest
    if located.local_path is None and located.size:
        needs.append(SpaceNeed("download", env.scratch_dir, int(located.size), basis="the S3 object's size"))
    if not stream:
        if manifest is not None and manifest.raw_bytes:
            needs.append(SpaceNeed("decompressed archive", env.archive_dir, int(manifest.raw_bytes), basis="the manifest's raw_bytes"))
        else:
            unchecked.append(f"decompressed archive in {env.archive_dir}: its size is unknown (no manifest)")
    if safety_backup and located.size:
        needs.append(
            SpaceNeed("safety backup", env.location.safety_dir, int(located.size), estimated=True, basis="about the backup's compressed size")
        )
    source_db = manifest.database if manifest is not None and manifest.database else env.spec.dbname
    size, why = _source_size(env, source_db)
    expected, estimated, basis = expected_database_bytes(size, manifest.raw_bytes if manifest else None)
    if size is None and why:
        basis = f"{basis}; {why}"
    try:
        with admin_connection(env.spec) as conn:
            volume = server_data_volume(conn, env.spec)
    except (ConnectionError, psycopg.Error) as exc:
        volume = DataVolume(None, f"the server is not reachable ({str(exc).splitlines()[0]})")
    if volume.path is None:
        unchecked.append(f"restored database (about {human_bytes(expected)}) on the server's data volume: {volume.why_not}")
    elif expected:
        needs.append(SpaceNeed("restored database", volume.path, expected, estimated=estimated, basis=basis))
    return needs, unchecked


def check_restore_space(
    env: RestoreEnvironment, located: LocatedBackup, *, stream: bool = False, safety_backup: bool = False
) -> SpaceReport:
    """Measure the restore's needs against the free space; log the result; raise :class:`NotEnoughSpace`
    (nothing touched) when a filesystem is too small."""
    needs, unchecked = restore_space_needs(env, located, stream=stream, safety_backup=safety_backup)
    report = measure(needs)
    report.unchecked = unchecked + report.unchecked
    for need in needs:
        env.log(f"space: {need.what} needs {human_bytes(need.bytes)} in {need.path} ({need.basis or 'known'})")
    (env.log if report.fits else env.warn)(f"space check: {report.summary()}")
    advice = (
        "Free space there, or point LOYALTY_RESTORE_TMP_DIR at a larger filesystem for the decompressed archive"
        + (", or restore with jobs: 1, which streams the archive into pg_restore without a temporary copy" if not stream else "")
    )
    refuse_unless_fits(report, advice=advice + ".")
    return report
