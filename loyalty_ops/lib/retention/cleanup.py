"""Carrying out a retention plan: S3 first, then local files, then logs.

Why S3 first: a local backup is only ever deleted together with its offsite copy (the planner decides
per backup), or not at all. Deleting S3 first lets the local step *see* what happened offsite before it
removes anything: a local file is deleted only when, after the S3 step, its offsite status is known:

- S3 answered ``Deleted`` for its object (the backup is being retired everywhere, as planned), or
- a HEAD shows its S3 object still there with the same size (S3 refused the delete, e.g. object lock
  or a bucket policy: the offsite copy still protects it).

Anything else (a per-key error and then a failed HEAD, a dropped connection, an endpoint that went away)
leaves the local file where it is. So an error in the middle of the S3 step can never leave a state in
which a backup's only copy is gone. Deletes go in batches of up to 1000 keys (DeleteObjects), and every
per-key error in the response is recorded; after a batch fails as a whole, no further S3 request is made.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from loyalty_ops.lib.retention.types import LOCAL, LOGS, S3, PlanItem, RetentionPlan
from loyalty_ops.lib.backup.location import BackupLocation

BATCH_SIZE = 1000


class RetentionBlocked(RuntimeError):
    """The plan is blocked: nothing may be deleted."""


@dataclass
class CleanupOutcome:
    dry_run: bool
    deleted: list[PlanItem] = field(default_factory=list)  # deleted (or, in a dry run, would be)
    skipped: list[tuple[PlanItem, str]] = field(default_factory=list)  # planned, not done, and why
    errors: list[str] = field(default_factory=list)
    s3_requests: int = 0

    @property
    def bytes_freed(self) -> int:
        return sum(i.size for i in self.deleted if i.kind != "multipart")

    def count(self, location: str, kind: Optional[str] = None) -> int:
        return sum(1 for i in self.deleted if i.location == location and (kind is None or i.kind == kind))


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def delete_objects(
    client: Any, bucket: str, keys: list[str], outcome: CleanupOutcome, log: Callable[[str], None], batch_size: int = BATCH_SIZE
) -> tuple[set[str], bool]:
    """Batched DeleteObjects. Returns (keys S3 confirmed deleted, whether every batch got an answer)."""
    if not 1 <= batch_size <= BATCH_SIZE:
        raise ValueError(f"batch_size must be 1..{BATCH_SIZE} (the DeleteObjects limit), got {batch_size}")
    confirmed: set[str] = set()
    batches = list(_chunks(keys, batch_size))
    last = time.monotonic()
    for number, batch in enumerate(batches, start=1):
        try:
            outcome.s3_requests += 1
            response = client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": False}
            )
        except Exception as exc:  # ClientError, EndpointConnectionError, ...: state of this batch unknown
            outcome.errors.append(
                f"DeleteObjects batch {number}/{len(batches)} ({len(batch)} keys) failed as a whole: {exc}; "
                f"{sum(len(b) for b in batches[number:])} keys in later batches were not attempted"
            )
            return confirmed, False
        deleted = {d["Key"] for d in response.get("Deleted", ())}
        confirmed |= deleted & set(batch)
        for err in response.get("Errors", ()):
            outcome.errors.append(f"S3 refused to delete s3://{bucket}/{err.get('Key')}: {err.get('Code')} {err.get('Message', '')}".strip())
        if number == len(batches) or time.monotonic() - last >= 10:  # progress at least every 10 s
            last = time.monotonic()
            log(f"DeleteObjects batch {number}/{len(batches)}: {len(confirmed):,} of {len(keys):,} keys deleted so far")
    return confirmed, True


def _offsite_still_there(client: Any, bucket: str, key: str, size: int, outcome: CleanupOutcome) -> bool:
    try:
        outcome.s3_requests += 1
        head = client.head_object(Bucket=bucket, Key=key)
    except Exception:
        return False
    return int(head.get("ContentLength", -1)) == size


def _unlink_if_unchanged(path: Path, size: int) -> Optional[str]:
    """Delete ``path`` if it is still the regular file of the planned size; else say why not."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "already gone"
    if not os.path.isfile(path) or os.path.islink(path):
        return "no longer a regular file"
    if st.st_size != size:
        return f"size changed since planning ({size} -> {st.st_size})"
    os.unlink(path)
    return None


def carry_out(
    plan: RetentionPlan,
    *,
    location: BackupLocation,
    client: Any = None,
    log_dir: Optional[Path] = None,
    dry_run: bool = False,
    log: Callable[[str], None] = lambda _m: None,
    batch_size: int = BATCH_SIZE,
) -> CleanupOutcome:
    """Carry out ``plan``'s deletions. Raises RetentionBlocked for a blocked plan, or one whose floor and
    offsite copies were not re-verified (``gates.apply_reverification``): nothing is touched."""
    if plan.blocked:
        raise RetentionBlocked(plan.blocked)
    if plan.deletions and not plan.reverified:
        raise RetentionBlocked(
            "the plan was not re-verified (the floor's files re-hashed, the offsite copies re-checked); "
            "plan with plan_with_reverification before carrying it out"
        )
    backup_dir, bucket = location.backup_dir, location.bucket
    outcome = CleanupOutcome(dry_run=dry_run)
    s3_items = [i for i in plan.deletions_at(S3) if i.kind in ("backup", "sidecar")]
    uploads = [i for i in plan.deletions_at(S3) if i.kind == "multipart"]
    if (s3_items or uploads) and (client is None or not bucket):
        raise ValueError("the plan deletes S3 objects but no S3 client/bucket was given")

    if dry_run:
        outcome.deleted = list(plan.deletions)
        log(f"dry run: would delete {len(outcome.deleted)} items ({outcome.bytes_freed} bytes); nothing was changed")
        return outcome

    # ---- 1. S3 objects, in batches
    confirmed: set[str] = set()
    s3_healthy = True
    if s3_items:
        # Sidecars after their backups, so an interrupted run leaves backups with sidecars, not the reverse.
        ordered = [i for i in s3_items if i.kind == "backup"] + [i for i in s3_items if i.kind == "sidecar"]
        confirmed, s3_healthy = delete_objects(client, bucket, [i.name for i in ordered], outcome, log, batch_size)
        for item in ordered:
            if item.name in confirmed:
                outcome.deleted.append(item)
            else:
                outcome.skipped.append((item, "S3 did not confirm the delete"))

    # ---- 2. incomplete multipart uploads
    for item in uploads:
        if not s3_healthy:
            outcome.skipped.append((item, "S3 deletes failed; not attempted"))
            continue
        try:
            outcome.s3_requests += 1
            client.abort_multipart_upload(Bucket=bucket, Key=item.name, UploadId=item.upload_id)
            outcome.deleted.append(item)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code == "NoSuchUpload":
                outcome.skipped.append((item, "already completed or aborted"))
            else:
                outcome.errors.append(f"abort of multipart upload {item.upload_id} for {item.name} failed: {exc}")

    # ---- 3. local backups and sidecars
    s3_key_of: dict[str, PlanItem] = {i.backup: i for i in plan.items if i.location == S3 and i.kind == "backup" and i.backup}
    local = plan.deletions_at(LOCAL)
    mains = {i.backup: i for i in local if i.kind == "backup"}
    removed_mains: set[str] = set()
    for backup, item in sorted(mains.items()):
        if plan.offsite_configured:
            remote = s3_key_of.get(backup)
            if remote is None:
                outcome.skipped.append((item, "no offsite object in the plan: local copy kept"))
                continue
            if remote.name not in confirmed and not _offsite_still_there(client, bucket, remote.name, item.size, outcome):
                outcome.skipped.append((item, "offsite status unknown after S3 errors: local copy kept"))
                continue
        why_not = _unlink_if_unchanged(Path(backup_dir) / item.name, item.size)
        if why_not is None:
            outcome.deleted.append(item)
            removed_mains.add(backup)
        else:
            outcome.skipped.append((item, why_not))
    for item in local:
        if item.kind != "sidecar":
            continue
        if item.backup in mains and item.backup not in removed_mains:
            outcome.skipped.append((item, "its backup file was kept"))
            continue
        why_not = _unlink_if_unchanged(Path(backup_dir) / item.name, item.size)
        if why_not is None:
            outcome.deleted.append(item)
        else:
            outcome.skipped.append((item, why_not))

    # ---- 4. logs
    logs = plan.deletions_at(LOGS)
    if logs and log_dir is not None:
        threshold = plan.now - timedelta(days=plan.policy.log_keep_days)
        for item in logs:
            path = Path(log_dir) / item.name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                outcome.skipped.append((item, "already gone"))
                continue
            if datetime.fromtimestamp(st.st_mtime, tz=timezone.utc) >= threshold:
                outcome.skipped.append((item, "written to since planning"))
                continue
            os.unlink(path)
            outcome.deleted.append(item)
    log(
        f"retention: deleted {len(outcome.deleted)} items ({outcome.bytes_freed} bytes), "
        f"skipped {len(outcome.skipped)}, {len(outcome.errors)} errors"
    )
    return outcome
