"""What the engine's work costs the database server, and the levers: how WAL segments and base backups are
compressed, and the CPU priority of the archiver (``archive_command`` starts one engine process per segment,
on the server's own CPUs). The defaults are chosen by measurement (docs/pitr.md, "What archiving costs").

Each compression needs its library where the engine runs: gzip is in every Python; zstd needs ``zstandard``,
lz4 ``lz4``, snappy ``python-snappy`` (``ENGINE_PACKAGES``). A restore reads every compression, whatever the
setting was when a segment or a base backup was written: the engine recognises it by the object's suffix.

And what a recovered instance runs with besides the source's configuration (``parse_instance_settings``): the
memory of the machine it recovers on, the preload libraries that machine has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional

from loyalty_ops.lib.pitr.location import PitrConfigError

# barman-cloud-wal-archive's choices (bzip2 and xz left out: several times gzip's CPU for a few percent).
WAL_COMPRESSIONS = ("zstd", "lz4", "gzip", "snappy", "none")
# The levels each accepts (the engine would silently clamp an out-of-range level; we refuse it) and ours by default.
WAL_LEVELS = {"zstd": (1, 22), "lz4": (0, 16), "gzip": (1, 9)}
DEFAULT_WAL_LEVELS = {"zstd": 1, "lz4": 0, "gzip": 1}
DEFAULT_WAL_COMPRESSION = "zstd"
DEFAULT_ARCHIVE_NICE = 10
# PostgreSQL's own wal_compression (full-page images compressed as they are written; lz4 and zstd since PostgreSQL 15):
# less WAL, so fewer segments and fewer engine processes. Part of the generated server settings.
SERVER_WAL_COMPRESSIONS = ("lz4", "zstd", "pglz", "off")
DEFAULT_SERVER_WAL_COMPRESSION = "lz4"

# barman-cloud-backup's choices. Its gzip is Python's tarfile stream at level 9 (no level option), on one core.
BACKUP_COMPRESSIONS = ("lz4", "gzip", "snappy", "none")
DEFAULT_BACKUP_COMPRESSION = "lz4"
DEFAULT_BACKUP_JOBS = 2

# Where the engine runs, each compression needs (pinned like the engine itself).
ENGINE_PACKAGES = {"zstd": ("zstandard==0.25.0",), "lz4": ("lz4==4.4.5",),
                   "snappy": ("python-snappy==0.7.3", "cramjam==2.14.0")}
_FLAGS = {"zstd": "--zstd", "lz4": "--lz4", "gzip": "--gzip", "snappy": "--snappy"}


def check_wal_compression(compression: Optional[str], level: Optional[int]) -> None:
    """Refuses a level the compression does not have (the engine would change it without a word)."""
    name = compression or DEFAULT_WAL_COMPRESSION
    if level is None:
        return
    if name not in WAL_LEVELS:
        raise PitrConfigError(
            f"LOYALTY_PITR_WAL_COMPRESSION_LEVEL is set to '{level}' but LOYALTY_PITR_WAL_COMPRESSION '{name}' has no "
            "levels; example: unset LOYALTY_PITR_WAL_COMPRESSION_LEVEL (or LOYALTY_PITR_WAL_COMPRESSION=zstd)")
    low, high = WAL_LEVELS[name]
    if not low <= level <= high:
        raise PitrConfigError(
            f"LOYALTY_PITR_WAL_COMPRESSION_LEVEL must be {low}-{high} for {name}, got '{level}'; example: "
            f"LOYALTY_PITR_WAL_COMPRESSION_LEVEL={DEFAULT_WAL_LEVELS[name]}")


@dataclass(frozen=True)
class ArchiveOptions:
    """How ``archive_command`` archives a segment: compression, its level (None: ours for that compression)
    and the CPU priority (``nice``, 0-19) of the engine process; and the server's ``wal_compression``, which
    decides how many segments there are to archive."""

    compression: str = DEFAULT_WAL_COMPRESSION
    level: Optional[int] = None
    nice: int = DEFAULT_ARCHIVE_NICE
    server_wal_compression: str = DEFAULT_SERVER_WAL_COMPRESSION

    def __post_init__(self) -> None:
        if self.compression not in WAL_COMPRESSIONS:
            raise PitrConfigError(f"LOYALTY_PITR_WAL_COMPRESSION must be one of {', '.join(WAL_COMPRESSIONS)}, got "
                                  f"{self.compression!r}; example: LOYALTY_PITR_WAL_COMPRESSION={DEFAULT_WAL_COMPRESSION}")
        check_wal_compression(self.compression, self.level)
        if self.server_wal_compression not in SERVER_WAL_COMPRESSIONS:
            raise PitrConfigError(
                f"LOYALTY_PITR_SERVER_WAL_COMPRESSION must be one of {', '.join(SERVER_WAL_COMPRESSIONS)}, got "
                f"{self.server_wal_compression!r}; example: LOYALTY_PITR_SERVER_WAL_COMPRESSION={DEFAULT_SERVER_WAL_COMPRESSION}")
        if not 0 <= self.nice <= 19:
            raise PitrConfigError(f"LOYALTY_PITR_ARCHIVE_NICE must be 0-19, got '{self.nice}'; example: "
                                  f"LOYALTY_PITR_ARCHIVE_NICE={DEFAULT_ARCHIVE_NICE}")

    @property
    def effective_level(self) -> Optional[int]:
        return self.level if self.level is not None else DEFAULT_WAL_LEVELS.get(self.compression)

    def compression_args(self) -> list[str]:
        if self.compression == "none":
            return []
        level = self.effective_level
        return [_FLAGS[self.compression], *(["--compression-level", str(level)] if level is not None else [])]

    def priority_prefix(self) -> list[str]:
        """``nice -n N`` in front of the engine (by name: the server's PATH finds it in every image)."""
        return ["nice", "-n", str(self.nice)] if self.nice else []

    def packages(self) -> tuple[str, ...]:
        return ENGINE_PACKAGES.get(self.compression, ())

    def describe(self) -> str:
        level = self.effective_level
        text = self.compression + (f" level {level}" if level is not None else "")
        text += f", nice {self.nice}" if self.nice else ""
        return text + (f", wal_compression {self.server_wal_compression}" if self.server_wal_compression != "off" else "")


# What archiving ran with before these levers existed: barman's gzip at its default level 6, full priority, and
# the server's wal_compression at PostgreSQL's default (off).
LEGACY_ARCHIVE = ArchiveOptions("gzip", 6, 0, "off")


@dataclass(frozen=True)
class BackupOptions:
    """How ``barman-cloud-backup`` writes a base backup: compression of its tar stream and upload processes."""

    compression: str = DEFAULT_BACKUP_COMPRESSION
    jobs: int = DEFAULT_BACKUP_JOBS

    def __post_init__(self) -> None:
        if self.compression not in BACKUP_COMPRESSIONS:
            raise PitrConfigError(
                f"LOYALTY_PITR_BASE_BACKUP_COMPRESSION must be one of {', '.join(BACKUP_COMPRESSIONS)}, got "
                f"{self.compression!r}; example: LOYALTY_PITR_BASE_BACKUP_COMPRESSION={DEFAULT_BACKUP_COMPRESSION}")
        if self.jobs < 1:
            raise PitrConfigError(f"LOYALTY_PITR_BASE_BACKUP_JOBS must be at least 1, got '{self.jobs}'; example: "
                                  f"LOYALTY_PITR_BASE_BACKUP_JOBS={DEFAULT_BACKUP_JOBS}")

    def args(self) -> list[str]:
        return ["-J", str(self.jobs), *([_FLAGS[self.compression]] if self.compression != "none" else [])]

    def packages(self) -> tuple[str, ...]:
        return ENGINE_PACKAGES.get(self.compression, ())


LEGACY_BACKUP = BackupOptions("gzip", 2)


# The recovered instance logs into its own file (server.log beside the data directory), whatever the source's
# logging: every line stamped in UTC, which is how the job reads how far recovery went and what it took.
INSTANCE_LOG_SETTINGS = {"logging_collector": "off", "log_destination": "stderr", "log_line_prefix": "%m [%p] ",
                         "log_timezone": "UTC"}
# Replay never waits on purpose: a delayed standby's setting in the source's configuration does not apply here.
REPLAY_SETTINGS = {"recovery_min_apply_delay": "0"}
# What loyalty_ops sets on every recovering instance and no setting may change: where it listens, that it never
# archives into the live archive, how it fetches WAL, where it logs, and (from the job's target) where recovery stops.
CONTROLLED_SETTINGS = ("port", "listen_addresses", "unix_socket_directories", "archive_mode", "archive_command",
                       "archive_library", "restore_command", "hot_standby", "ssl", *INSTANCE_LOG_SETTINGS, *REPLAY_SETTINGS)
SETTING_NAME = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?$")


def parse_instance_settings(text: Optional[str], field: str) -> dict[str, str]:
    """``NAME=VALUE,NAME=VALUE`` (``shared_buffers=1GB,huge_pages=off,shared_preload_libraries=``): server settings
    of a recovered instance that win over the source's configuration files (an empty value sets it empty). Refuses
    a malformed item and the settings loyalty_ops controls, naming ``field`` and the fix."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, eq, value = item.partition("=")
        name = name.strip().lower()
        if not eq or not SETTING_NAME.match(name):
            raise PitrConfigError(f"{field}: {item.strip()!r} is not NAME=VALUE (items are separated by commas, so a "
                                  "value cannot hold one); example: shared_buffers=1GB,huge_pages=off")
        if name in CONTROLLED_SETTINGS or name.startswith("recovery_target"):
            raise PitrConfigError(f"{field}: {name} is set by loyalty_ops on every recovered instance (and the target by "
                                  "the job's target_time, target_name or latest); remove it")
        out[name] = value.strip()
    return out


def format_instance_settings(settings: Mapping[str, str]) -> str:
    """The settings as ``parse_instance_settings`` reads them (for metadata and logs)."""
    return ",".join(f"{name}={value}" for name, value in settings.items())
