"""Retention fixtures: real backup-shaped files on disk and objects on the moto S3 server, and backup
history written into a real Dagster instance (materializations and check evaluations, as the backup
job records them, without running a month of dumps)."""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Optional

import dagster as dg
import pytest
from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData

from loyalty_ops.defs.backups.history import BACKUP_ASSET_KEY, INTEGRITY_CHECK_NAMES, OFFSITE_ASSET_KEY
from loyalty_ops.defs.resources import BackupStorage, OffsiteStorage
from loyalty_ops.defs.retention.settings import RetentionSettings
from loyalty_ops.lib.backup.naming import BackupName, backup_name
from loyalty_ops_tests.conftest import s3_resource

DB = "loyalty"
PREFIX = "backups/"


def record_backup(instance: dg.DagsterInstance, path: Path, *, passed: bool = True) -> None:
    """A database_backup materialization and its four integrity check evaluations."""
    data = path.read_bytes() if path.exists() else b""
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=BACKUP_ASSET_KEY,
            metadata={"path": str(path), "filename": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        )
    )
    record = instance.fetch_materializations(BACKUP_ASSET_KEY, limit=1).records[0]
    target = AssetCheckEvaluationTargetMaterializationData(
        storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp
    )
    for number, name in enumerate(INTEGRITY_CHECK_NAMES):
        ok = passed or number != 1  # a failed backup fails its checksum check
        instance.report_runless_asset_event(
            dg.AssetCheckEvaluation(asset_key=BACKUP_ASSET_KEY, check_name=name, passed=ok, target_materialization_data=target)
        )


def record_offsite(instance: dg.DagsterInstance, name: BackupName, size: int) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key=OFFSITE_ASSET_KEY,
            metadata={"filename": name.filename, "key": name.s3_key(PREFIX), "bytes": size, "verified": True},
        )
    )


def record_drill(instance: dg.DagsterInstance, filename: str, passed: bool) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="restore_drill", metadata={"backup_filename": filename, "passed": passed})
    )


@dataclass
class BackupWorld:
    """Nightly backups ``days_ago`` on disk (with sidecars), on S3 and in the history."""

    backup_dir: Path
    client: object
    bucket: str
    instance: dg.DagsterInstance
    now: datetime
    names: dict[int, BackupName] = field(default_factory=dict)

    def add(self, days_ago: int, *, passed: bool = True, local: bool = True, offsite: bool = True, size: int = 2048) -> BackupName:
        name = backup_name(DB, self.now - timedelta(days=days_ago))
        body = os.urandom(size)
        path = self.backup_dir / name.filename
        digest = hashlib.sha256(body).hexdigest()
        sidecar = f"{digest}  {name.filename}\n".encode()
        if local:
            path.write_bytes(body)
            (self.backup_dir / (name.filename + ".sha256")).write_bytes(sidecar)
            (self.backup_dir / (name.filename + ".manifest.json")).write_text("{}")
            mtime = name.taken_at.timestamp()
            os.utime(path, (mtime, mtime))
        if offsite:
            # As offsite_backup_copy leaves it: the object (sha256 in its metadata) and both sidecars.
            key = name.s3_key(PREFIX)
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, Metadata={"sha256": digest}, ChecksumAlgorithm="SHA256")
            self.client.put_object(Bucket=self.bucket, Key=key + ".sha256", Body=sidecar)
            self.client.put_object(Bucket=self.bucket, Key=key + ".manifest.json", Body=b"{}")
            record_offsite(self.instance, name, size)
        self.names[days_ago] = name
        return name

    def record(self, days: Iterable[int], failed: Iterable[int] = ()) -> None:
        """History oldest first, as the nightly job would have written it."""
        failed = set(failed)
        for d in sorted(days, reverse=True):
            record_backup(self.instance, self.backup_dir / self.names[d].filename, passed=d not in failed)

    def local_names(self) -> set[str]:
        return {p.name for p in self.backup_dir.iterdir()}

    def keys(self) -> set[str]:
        out, token = set(), None
        while True:
            kwargs = {"Bucket": self.bucket}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.client.list_objects_v2(**kwargs)
            out |= {o["Key"] for o in page.get("Contents", ())}
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]


@pytest.fixture
def retention_bucket(s3_client) -> str:
    name = f"loyalty-ret-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def retention_instance(tmp_path):
    """An in-memory Dagster instance: the same event-log API as the sqlite one, without an fsync per event
    (a month of history is a few hundred events)."""
    with dg.DagsterInstance.ephemeral(tempdir=str(tmp_path / "dagster_storage")) as instance:
        yield instance


@pytest.fixture
def world(tmp_path, s3_client, retention_bucket, retention_instance) -> BackupWorld:
    backup_dir = tmp_path / "backups"
    backup_dir.mkdir()
    # Recent enough that the staleness gate is satisfied by "0 days ago".
    now = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
    return BackupWorld(backup_dir, s3_client, retention_bucket, retention_instance, now)


def retention_resources(world: BackupWorld, s3_server, *, log_dir: Optional[Path] = None, **settings) -> dict:
    return {
        "postgres": postgres_target_stub(),
        "backup_storage": BackupStorage(backup_dir=str(world.backup_dir)),
        "offsite": OffsiteStorage(s3=s3_resource(s3_server), bucket=world.bucket, prefix=PREFIX),
        "retention_settings": RetentionSettings(log_dir=str(log_dir) if log_dir else None, **settings),
    }


def postgres_target_stub():
    """Retention only needs the database's name; no connection is made."""
    from loyalty_ops.defs.resources import PostgresTarget

    return PostgresTarget(host="127.0.0.1", port=1, user="nobody", database=DB)


__all__ = ["BackupWorld", "record_backup", "record_drill", "record_offsite", "retention_resources", "DB", "PREFIX"]
