"""What a restore will do, decided before anything is touched.

:func:`validate_request` turns the launchpad's raw values into a :class:`RestoreRequest` or raises
:class:`RestoreConfigError` naming the field and the fix. :func:`plan_steps` lists the steps a valid
request will take, in order, so the run log says up front what is about to happen (and what will not).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from loyalty_ops.lib.backup.location import SAFETY_SUBDIR
from loyalty_ops.lib.backup.naming import parse_backup_name

MODES = ("new_database", "replace", "new_server")
MAX_JOBS = 16
# Databases a restore must never overwrite or create: the cluster's own.
PROTECTED_DATABASES = frozenset({"postgres", "template0", "template1"})
_DB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
MAX_IDENTIFIER_BYTES = 63
DRILL_PREFIX = "loyalty_drill_"
DRILL_EVERY_ENV = "LOYALTY_DRILL_EVERY_N_BACKUPS"


class RestoreConfigError(ValueError):
    """The restore request is invalid; nothing was touched. The message names the field and the fix."""


@dataclass(frozen=True)
class BackupRef:
    """Which backup to restore: the newest one, a file name (``safety/<file>`` for a safety backup), or an S3 key."""

    kind: str  # "latest" | "file" | "s3_key"
    value: str = ""

    @property
    def is_safety(self) -> bool:
        return self.kind == "file" and self.value.startswith(f"{SAFETY_SUBDIR}/")

    @property
    def filename(self) -> Optional[str]:
        if self.kind == "file":
            return self.value.rsplit("/", 1)[-1]
        if self.kind == "s3_key":
            return self.value.rsplit("/", 1)[-1]
        return None

    def describe(self) -> str:
        if self.kind == "latest":
            return "the newest backup that passed its integrity checks (and its drill, when one ran)"
        if self.kind == "s3_key":
            return f"s3 key {self.value}"
        return f"file {self.value}"


def parse_backup_ref(text: str) -> BackupRef:
    """``latest``, ``loyalty_20261127_020000.dump.gz`` (or a path to it), ``safety/<file>`` (a safety backup
    in the backup directory), ``s3://bucket/key`` or ``prefix/.../file``."""
    value = (text or "").strip()
    if not value:
        raise RestoreConfigError(
            "backup is empty: set it to 'latest', a file name like loyalty_20261127_020000.dump.gz, or an S3 key"
        )
    if value.lower() == "latest":
        return BackupRef("latest")
    if value.startswith("s3://"):
        _, _, rest = value[5:].partition("/")
        if not rest:
            raise RestoreConfigError(f"backup {value!r} has no key after the bucket; example: s3://bucket/backups/2026/11/27/loyalty_20261127_020000.dump.gz")
        value = rest
        kind = "s3_key"
    elif value.startswith("/") or value.startswith("./"):
        kind = "file"
    elif value.startswith(f"{SAFETY_SUBDIR}/") and value.count("/") == 1:
        kind = "file"  # the documented undo of a replace: the safety backup it took, never an S3 key
    else:
        kind = "s3_key" if "/" in value else "file"
    name = value.rsplit("/", 1)[-1]
    if parse_backup_name(name) is None:
        raise RestoreConfigError(
            f"backup {text!r} is not a backup file name of this tool: expected NAME_YYYYMMDD_HHMMSS.dump.gz "
            "or .dump.zst (or 'latest')"
        )
    return BackupRef(kind, value)


def check_database_name(name: str, field: str = "target_database") -> str:
    name = (name or "").strip()
    if not name:
        raise RestoreConfigError(f"{field} is empty: name the database to restore into, e.g. loyalty_restored")
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        raise RestoreConfigError(f"{field} {name!r} is longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte limit")
    if not _DB_NAME_RE.match(name):
        raise RestoreConfigError(
            f"{field} {name!r} may contain only letters, digits, '_' and '-' and must start with a letter or '_'"
        )
    if name in PROTECTED_DATABASES:
        raise RestoreConfigError(f"{field} {name!r} is a system database; restore into an application database")
    return name


@dataclass(frozen=True)
class RestoreRequest:
    backup: BackupRef
    target_database: str
    mode: str = "new_database"
    jobs: int = 2
    no_owner: bool = False

    @property
    def replace(self) -> bool:
        return self.mode == "replace"


def validate_request(
    *,
    backup: str,
    target_database: str,
    mode: str = "new_database",
    confirm: Optional[str] = None,
    jobs: int = 2,
    no_owner: bool = False,
) -> RestoreRequest:
    """Check every field; raise :class:`RestoreConfigError` on the first mistake, before anything is touched."""
    if mode not in MODES:
        raise RestoreConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    ref = parse_backup_ref(backup)
    target = check_database_name(target_database)
    if target.startswith(DRILL_PREFIX):
        raise RestoreConfigError(
            f"target_database {target!r} starts with {DRILL_PREFIX!r}, which restore drills drop; choose another name"
        )
    if not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise RestoreConfigError(f"jobs must be a whole number from 1 to {MAX_JOBS} (pg_restore -j), got {jobs!r}")
    if mode == "new_server" and no_owner:
        raise RestoreConfigError(
            "no_owner cannot be used with mode 'new_server': that mode restores the roles so that every object "
            "keeps its owner; leave no_owner false"
        )
    if mode == "replace":
        if not confirm:
            raise RestoreConfigError(
                f"mode 'replace' drops database {target!r}: set confirm to {target!r} to confirm. Nothing was changed."
            )
        if confirm != target:
            raise RestoreConfigError(
                f"confirm {confirm!r} does not equal target_database {target!r}: type the target's name exactly to "
                "replace it. Nothing was changed."
            )
    elif confirm and confirm != target:
        raise RestoreConfigError(
            f"confirm {confirm!r} does not equal target_database {target!r}; leave confirm empty in new_database mode"
        )
    return RestoreRequest(ref, target, mode, jobs, no_owner)


def plan_steps(request: RestoreRequest, *, local: Optional[bool] = None) -> list[str]:
    """The steps a request will take, for the run log (``local`` None: not known yet)."""
    steps = [
        f"find {request.backup.describe()}",
        "check that its temporary files and the new database fit on their disks (refused with the numbers if not)",
    ]
    if local is not True:
        steps.append("download it from S3 if it is not on this machine")
    if request.jobs == 1:
        steps.append(
            "verify its SHA-256 against the .sha256 sidecar / manifest and read the whole archive without writing "
            "it; it is streamed into pg_restore (jobs 1: no temporary copy)"
        )
    else:
        steps.append("verify its SHA-256 against the .sha256 sidecar / manifest, decompressing it to a private temporary file")
    if request.replace:
        steps += [
            f"take a safety backup of {request.target_database}",
            f"pg_restore -j {request.jobs} --exit-on-error into a side database",
            "compare row counts and materialized views with the backup's manifest",
            f"block new connections to {request.target_database}, terminate the existing ones",
            f"swap the side database in as {request.target_database} and drop the old one",
        ]
    elif request.mode == "new_server":
        steps += [
            "fetch the backup's cluster globals file and verify its SHA-256 against the manifest",
            "create the roles the backup recorded (with their password hashes) and their memberships; roles that "
            "already exist are left exactly as they are and reported",
            f"create database {request.target_database} (refused if it exists) with the source's encoding and locale",
            f"pg_restore -j {request.jobs} --exit-on-error into it, objects owned by their original roles",
            "give the database its recorded owner, grants and settings",
            "compare row counts and materialized views with the backup's manifest",
        ]
    else:
        steps += [
            f"create database {request.target_database} (refused if it exists) with the source's encoding and locale",
            f"pg_restore -j {request.jobs} --exit-on-error into it",
            "compare row counts and materialized views with the backup's manifest",
        ]
    steps.append("remove the temporary files")
    return steps


def side_database_name(target: str, now: datetime) -> str:
    """A side database for ``replace``: restored and verified there, then swapped in."""
    suffix = f"_restore_{now.astimezone(timezone.utc):%Y%m%d_%H%M%S}"
    return target[: MAX_IDENTIFIER_BYTES - len(suffix)] + suffix


def retired_database_name(target: str, now: datetime) -> str:
    suffix = f"_replaced_{now.astimezone(timezone.utc):%Y%m%d_%H%M%S}"
    return target[: MAX_IDENTIFIER_BYTES - len(suffix)] + suffix


def drill_database_name(now: datetime, token: Optional[str] = None) -> str:
    """``loyalty_drill_<YYYYMMDD_HHMMSS>_<8 hex>``: unique even for two drills started in the same second."""
    token = token or secrets.token_hex(4)
    return f"{DRILL_PREFIX}{now.astimezone(timezone.utc):%Y%m%d_%H%M%S}_{token}"


# The suffix is optional: drills before it existed named their scratch database by the second alone.
_DRILL_NAME_RE = re.compile(rf"^{DRILL_PREFIX}(\d{{4}})(\d\d)(\d\d)_(\d\d)(\d\d)(\d\d)(?:_[0-9a-f]{{8}})?$")


def drill_database_time(name: str) -> Optional[datetime]:
    """When a scratch database was created, from its name; None when it is not a drill's (also for an
    impossible timestamp such as month 13: such a database is left alone)."""
    match = _DRILL_NAME_RE.match(name)
    if not match:
        return None
    try:
        return datetime(*(int(part) for part in match.groups()), tzinfo=timezone.utc)  # type: ignore[misc]
    except ValueError:
        return None


def parse_drill_every(text: Optional[str]) -> int:
    """The value of ``LOYALTY_DRILL_EVERY_N_BACKUPS``: 1 (default, also when empty) drills every backup, 7 every
    seventh, 0 never."""
    raw = (text or "").strip()
    if not raw:
        return 1
    if not raw.isdigit():
        raise RestoreConfigError(
            f"{DRILL_EVERY_ENV} must be a whole number (1 = drill every backup, 7 = every seventh, 0 = never), got {raw!r}"
        )
    return int(raw)


def drill_due(every_n: int, backups_since_last_drill: Optional[int]) -> tuple[bool, str]:
    """Whether this backup gets a drill. ``backups_since_last_drill`` counts backups newer than the one the
    last drill restored, this one included (None: no drill has ever run)."""
    if every_n <= 0:
        return False, f"restore drills are switched off ({DRILL_EVERY_ENV}=0)"
    if backups_since_last_drill is None:
        return True, "no restore drill has run yet"
    if backups_since_last_drill >= every_n:
        return True, f"{backups_since_last_drill} backup(s) since the last drill, drilling every {every_n}"
    return False, (
        f"{backups_since_last_drill} backup(s) since the last drill; drilling every {every_n} "
        f"({DRILL_EVERY_ENV}); the next drill runs after {every_n - backups_since_last_drill} more"
    )
