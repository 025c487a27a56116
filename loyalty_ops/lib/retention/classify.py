"""Which listed files and keys are this database's backups (and their sidecars), grouped into one unit
per backup. Everything else is "left alone". Names are parsed only by ``parse_backup_name`` /
``parse_backup_key``, the one strict parser: an impossible timestamp (month 13) is not a backup."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from loyalty_ops.lib.backup.globals import GLOBALS_NAME_RE
from loyalty_ops.lib.backup.naming import SIDECAR_SUFFIX, BackupName, normalize_prefix, parse_backup_name
from loyalty_ops.lib.retention.types import SIDECAR_SUFFIXES, Inventory, LocalFile, RemoteObject


@dataclass
class Unit:
    """One backup: its file and sidecars on disk and on S3."""

    name: BackupName
    filename: str  # == name.filename, kept as the string (formatting it 100,000 times is slow)
    local_main: Optional[LocalFile] = None
    local_sidecars: list[LocalFile] = field(default_factory=list)
    remote_main: Optional[RemoteObject] = None
    remote_sidecars: list[RemoteObject] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.local_main is not None or self.remote_main is not None

    def local_sidecar(self, suffix: str = SIDECAR_SUFFIX) -> Optional[LocalFile]:
        return next((f for f in self.local_sidecars if f.name.endswith(suffix)), None)

    def remote_sidecar(self, suffix: str = SIDECAR_SUFFIX) -> Optional[RemoteObject]:
        return next((o for o in self.remote_sidecars if o.key.endswith(suffix)), None)


def split_sidecar(name: str) -> tuple[str, Optional[str]]:
    """(base, suffix) of a sidecar name or key; the cluster globals file ``<db>_<stamp>.globals.sql.gz[.age]``
    counts as a sidecar of the backup with the same stamp (its base is ``<db>_<stamp>``)."""
    globals_match = GLOBALS_NAME_RE.match(name.rsplit("/", 1)[-1])
    if globals_match is not None:
        suffix = globals_match.group("suffix")
        return name[: -len(suffix)], suffix
    for suffix in SIDECAR_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, None


def classify_local(name: str, database: str) -> tuple[Optional[BackupName], Optional[str], str]:
    """(backup name, sidecar suffix or None, why ignored). The backup name is None when out of scope."""
    base, suffix = split_sidecar(name)
    parsed = parse_backup_name(_as_backup_name(base, suffix))
    if parsed is None:
        return None, None, "not a backup name"
    if parsed.database != database:
        return None, None, f"backup of another database ({parsed.database})"
    return parsed, suffix, ""


def classify_key(key: str, prefix: str, database: str) -> tuple[Optional[BackupName], Optional[str], str]:
    """Like :func:`classify_local` for an S3 key: it must be exactly ``PREFIX/YYYY/MM/DD/<file>[sidecar]``
    (``BackupName.s3_key``, what ``parse_backup_key`` accepts) with the date path of the file's own stamp."""
    return _classify_key(key, normalize_prefix(prefix), database)


def _classify_key(key: str, prefix: str, database: str) -> tuple[Optional[BackupName], Optional[str], str]:
    if not key.startswith(prefix):
        return None, None, "outside the prefix"
    base, suffix = split_sidecar(key)
    base = _as_backup_name(base, suffix)
    filename = base.rsplit("/", 1)[-1]
    parsed = parse_backup_name(filename)
    if parsed is None:
        return None, None, "not a backup name"
    # == parse_backup_key(base, prefix) is not None (a property test holds them equal), without formatting
    # the key again: 100,000 keys would spend half the planning time in strftime.
    stamp = filename[len(parsed.database) + 1 :]
    if base != f"{prefix}{stamp[0:4]}/{stamp[4:6]}/{stamp[6:8]}/{filename}":
        return None, None, "not at PREFIX/YYYY/MM/DD/<file> for its own date"
    if parsed.database != database:
        return None, None, f"backup of another database ({parsed.database})"
    return parsed, suffix, ""


def is_globals(suffix: Optional[str]) -> bool:
    return bool(suffix and suffix.startswith(".globals."))


def _as_backup_name(base: str, suffix: Optional[str]) -> str:
    """A globals file's base is ``<db>_<stamp>``: parse it as the gzip backup of that stamp (which backup
    it belongs to is settled by its stamp in :func:`group_units`)."""
    return f"{base}.dump.gz" if is_globals(suffix) else base


def group_units(inventory: Inventory, prefix: str) -> tuple[dict[str, Unit], list[str], list[str]]:
    """(units by backup file name, ignored local names with why, ignored S3 keys with why)."""
    database = inventory.database
    units: dict[str, Unit] = {}
    ignored_local: list[str] = []
    ignored_remote: list[str] = []

    def unit_for(name: BackupName, filename: str) -> Unit:
        unit = units.get(filename)
        if unit is None:
            unit = units[filename] = Unit(name, filename)
        return unit

    globals_files: list[tuple[BackupName, Optional[LocalFile], Optional[RemoteObject]]] = []
    for f in inventory.local:
        parsed, suffix, why = classify_local(f.name, database)
        if parsed is None:
            ignored_local.append(f"{f.name} ({why})")
        elif is_globals(suffix):
            globals_files.append((parsed, f, None))
        elif suffix is None:
            unit_for(parsed, f.name).local_main = f
        else:
            unit_for(parsed, f.name[: -len(suffix)]).local_sidecars.append(f)
    # A backup's object and its sidecars share a base key: classify each base once.
    bases: dict[str, tuple[Optional[Unit], str]] = {}
    for obj in inventory.remote or ():
        base, suffix = split_sidecar(obj.key)
        if is_globals(suffix):
            parsed, _suffix, why = _classify_key(obj.key, prefix, database)
            if parsed is None:
                ignored_remote.append(f"{obj.key} ({why})")
            else:
                globals_files.append((parsed, None, obj))
            continue
        known_base = bases.get(base)
        if known_base is None:
            parsed, _suffix, why = _classify_key(base, prefix, database)
            known_base = bases[base] = (unit_for(parsed, base.rsplit("/", 1)[-1]) if parsed is not None else None, why)
        unit, why = known_base
        if unit is None:
            ignored_remote.append(f"{obj.key} ({why})")
        elif suffix is None:
            unit.remote_main = obj
        else:
            unit.remote_sidecars.append(obj)
    # A globals file goes with the backup of its stamp (whatever its compression); alone, it is kept or
    # deleted as a sidecar without its backup file.
    by_stamp = {(u.name.database, u.name.taken_at): u for u in units.values()}
    for parsed, local_file, remote_obj in globals_files:
        unit = by_stamp.get((parsed.database, parsed.taken_at)) or unit_for(parsed, parsed.filename)
        if local_file is not None:
            unit.local_sidecars.append(local_file)
        if remote_obj is not None:
            unit.remote_sidecars.append(remote_obj)
    return units, ignored_local, ignored_remote
