"""Immutable offsite copies with S3 Object Lock.

With ``LOYALTY_S3_OBJECT_LOCK_DAYS=N`` every object this tool puts (backup, globals, sidecars) carries its
own retention (``ObjectLockMode`` GOVERNANCE or COMPLIANCE, ``ObjectLockRetainUntilDate`` now + N days):
until then nobody with ordinary credentials can delete or overwrite that version, not a stolen key, not
ransomware on the ops box, not a retention bug. Object Lock needs a bucket created with it (which also turns
versioning on): :func:`require_object_lock` checks that before a backup writes anything.

What follows from it:
- a streamed upload would be stamped with its SHA-256 by a copy onto itself, leaving a second locked version
  of every backup; with a lock the backup is uploaded once, after its checks, with its checksum in place;
- retention never plans to delete a locked copy early (:func:`locked_until`), and says so;
- a deleted key on a versioned bucket leaves its versions behind: a lifecycle rule
  (``NoncurrentVersionExpiration``) frees them once their lock has expired (docs/disaster-recovery.md).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Optional

LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
DEFAULT_LOCK_MODE = "GOVERNANCE"


class ObjectLockError(RuntimeError):
    """Locking was asked for and the bucket cannot do it; nothing was written."""


def lock_args(days: Optional[int], mode: str = DEFAULT_LOCK_MODE, *, now: Optional[datetime] = None) -> dict[str, Any]:
    """boto3 arguments that lock one object for ``days`` from ``now`` (empty when no lock is configured)."""
    if not days:
        return {}
    if mode not in LOCK_MODES:
        raise ValueError(f"LOYALTY_S3_OBJECT_LOCK_MODE must be GOVERNANCE or COMPLIANCE, got {mode!r}")
    until = (now or datetime.now(timezone.utc)) + timedelta(days=days)
    return {"ObjectLockMode": mode, "ObjectLockRetainUntilDate": until.replace(microsecond=0)}


def require_object_lock(client: Any, bucket: str, days: int) -> str:
    """Refuse unless ``bucket`` has Object Lock enabled. Returns a line for the run log."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        config = client.get_object_lock_configuration(Bucket=bucket).get("ObjectLockConfiguration") or {}
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "ObjectLockConfigurationNotFoundError":
            config = {}
        else:
            raise ObjectLockError(
                f"LOYALTY_S3_OBJECT_LOCK_DAYS={days} but the Object Lock configuration of s3://{bucket} cannot be "
                f"read ({code or exc}); grant s3:GetBucketObjectLockConfiguration or unset the variable. Nothing was written."
            ) from None
    except BotoCoreError as exc:
        raise ObjectLockError(f"s3://{bucket} cannot be reached to check Object Lock: {exc}. Nothing was written.") from None
    if config.get("ObjectLockEnabled") != "Enabled":
        raise ObjectLockError(
            f"LOYALTY_S3_OBJECT_LOCK_DAYS={days} but s3://{bucket} does not have Object Lock enabled, so the copies "
            "could be deleted. Object Lock can only be set when a bucket is created: create a new bucket with it "
            "(aws s3api create-bucket --bucket NAME --object-lock-enabled-for-bucket) and point LOYALTY_S3_BUCKET "
            "at it, or unset LOYALTY_S3_OBJECT_LOCK_DAYS. Nothing was written."
        )
    default = (config.get("Rule") or {}).get("DefaultRetention") or {}
    extra = f"; bucket default retention {default}" if default else ""
    return f"s3://{bucket} has Object Lock enabled{extra}; every object is locked for {days} days"


def locked_until(last_modified: datetime, days: Optional[int]) -> Optional[datetime]:
    """When the lock of an object this tool uploaded at ``last_modified`` ends (None without a lock). Its
    retain-until date was set to upload start + ``days``, so this is at or after the real date: safe."""
    if not days:
        return None
    return last_modified + timedelta(days=days)
