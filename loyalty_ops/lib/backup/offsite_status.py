"""Is a backup's offsite copy complete? The object and both sidecars present in S3, and agreeing.

:func:`offsite_copy_status` is what the offsite copy checks before it reports ``verified: true``, and what
retention and restore ask before they count or use an S3 copy. A copy is complete when:

- the object exists and carries its own SHA-256 in user metadata (``x-amz-meta-sha256``);
- ``KEY.sha256`` exists and names that same SHA-256 (``sha256sum`` format);
- ``KEY.manifest.json`` exists and records that SHA-256 and the object's size;
- the cluster globals file the manifest names (``<db>_<stamp>.globals.sql.gz``) is beside it with the
  recorded size and SHA-256;
- S3's own ``ChecksumSHA256`` of a single-part object is that SHA-256;
- and, when the caller knows them (the local file's), the size and SHA-256 match those too.

It only HEADs the object and reads the two small sidecars: a few requests per backup, no download.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from loyalty_ops.lib.backup.location import BackupLocation
from loyalty_ops.lib.backup.offsite_errors import S3_ERRORS, SHA256_METADATA, OffsiteError, error_code, explain

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MISSING = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True)
class OffsiteCopyStatus:
    """What S3 holds for one backup key. ``complete`` is the only thing to count on."""

    bucket: str
    key: str
    complete: bool
    problems: tuple[str, ...] = ()
    bytes: Optional[int] = None  # the object's size, when it exists
    sha256: Optional[str] = None  # the object's sha256 metadata, when present
    s3_checksum_sha256: str = ""
    unreadable: bool = False  # S3 could not be asked (credentials, network): not the same as "missing"
    sidecar_keys: tuple[str, ...] = field(default=())

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def summary(self) -> str:
        return f"{self.uri} is complete" if self.complete else f"{self.uri} is not complete: {'; '.join(self.problems)}"


def whole_object_checksum(sha256_hex: str) -> str:
    """S3's ``ChecksumSHA256`` of an object stored in one piece: the base64 of its SHA-256."""
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode()


def _read_small(client: Any, bucket: str, key: str) -> Optional[str]:
    """The text of a small object, or None when it does not exist (other errors propagate)."""
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read(1 << 20)
    except S3_ERRORS as exc:
        if error_code(exc) in _MISSING:
            return None
        raise
    return body.decode("utf-8", errors="replace")


def offsite_copy_status(
    client: Any,
    bucket: str,
    key: str,
    *,
    expected_sha256: Optional[str] = None,
    expected_bytes: Optional[int] = None,
) -> OffsiteCopyStatus:
    """Whether the backup at ``s3://bucket/key`` is completely offsite (see the module docstring).

    Never raises for S3 errors: an S3 that cannot be asked gives ``complete=False, unreadable=True`` with the
    reason, so callers can tell "we could not check" from "it is incomplete".
    """
    sidecar_key, manifest_key = BackupLocation.sidecar_names(key)
    problems: list[str] = []
    try:
        try:
            head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except S3_ERRORS as exc:
            if error_code(exc) not in _MISSING:
                raise
            head = None
        sidecar_text = _read_small(client, bucket, sidecar_key)
        manifest_text = _read_small(client, bucket, manifest_key)
    except S3_ERRORS as exc:
        return OffsiteCopyStatus(bucket, key, False, (f"S3 could not be read: {explain(exc, bucket)}",), unreadable=True)

    size = sha = None
    checksum = ""
    single_part = False
    if head is None:
        problems.append("the object is missing")
    else:
        size = int(head["ContentLength"])
        checksum = head.get("ChecksumSHA256") or ""
        single_part = "-" not in (head.get("ETag") or "-") and "-" not in checksum
        sha = (head.get("Metadata") or {}).get(SHA256_METADATA)
        if not sha or not _HEX64.match(sha):
            problems.append(f"the object carries no valid x-amz-meta-{SHA256_METADATA} (got {sha!r})")
            sha = None
    if sidecar_text is None:
        problems.append(f"{sidecar_key.rsplit('/', 1)[-1]} is missing")
    else:
        sidecar_sha = (sidecar_text.split() or [""])[0].lower()
        if not _HEX64.match(sidecar_sha):
            problems.append(f"{sidecar_key.rsplit('/', 1)[-1]} holds no SHA-256")
        elif sha and sidecar_sha != sha:
            problems.append(f"{sidecar_key.rsplit('/', 1)[-1]} says {sidecar_sha}, the object's metadata says {sha}")
    if manifest_text is None:
        problems.append(f"{manifest_key.rsplit('/', 1)[-1]} is missing")
    else:
        try:
            manifest = json.loads(manifest_text)
        except ValueError:
            manifest = None
        if not isinstance(manifest, dict):
            problems.append(f"{manifest_key.rsplit('/', 1)[-1]} is not valid JSON")
        else:
            if sha and manifest.get("sha256") != sha:
                problems.append(f"the manifest records sha256 {manifest.get('sha256')}, the object {sha}")
            if size is not None and manifest.get("bytes") is not None and manifest.get("bytes") != size:
                problems.append(f"the manifest records {manifest.get('bytes')} bytes, the object has {size}")
            problems += _globals_problems(client, bucket, key, manifest.get("globals"))
    # A whole-object checksum (a single-part object: no "-N" in its ETag) must be the SHA-256 itself. A
    # multipart object's is a checksum of its parts (some stores drop its "-N" suffix): not comparable here.
    if sha and checksum and single_part and checksum.split("-")[0] != whole_object_checksum(sha):
        problems.append("S3's ChecksumSHA256 of the object differs from its sha256 metadata")
    if expected_sha256 and sha and sha != expected_sha256:
        problems.append(f"the object's sha256 {sha} is not the local backup's {expected_sha256}")
    if expected_bytes is not None and size is not None and size != expected_bytes:
        problems.append(f"the object has {size} bytes, the local backup {expected_bytes}")
    return OffsiteCopyStatus(
        bucket, key, not problems, tuple(problems), size, sha, checksum,
        sidecar_keys=(sidecar_key, manifest_key),
    )


def _globals_problems(client: Any, bucket: str, key: str, recorded: Any) -> list[str]:
    """The cluster globals file the manifest names must be beside the object with its recorded size and
    SHA-256 (backups from before globals were taken name none)."""
    if not isinstance(recorded, dict) or not recorded.get("filename"):
        return []
    globals_key = f"{key.rpartition('/')[0]}/{recorded['filename']}" if "/" in key else recorded["filename"]
    try:
        head = client.head_object(Bucket=bucket, Key=globals_key)
    except S3_ERRORS as exc:
        if error_code(exc) in _MISSING:
            return [f"{recorded['filename']} (the cluster globals) is missing"]
        return [f"{recorded['filename']} (the cluster globals) could not be read: {explain(exc, bucket)}"]
    problems = []
    if int(head["ContentLength"]) != recorded.get("bytes"):
        problems.append(f"{recorded['filename']} has {head['ContentLength']} bytes, the manifest records {recorded.get('bytes')}")
    if (head.get("Metadata") or {}).get(SHA256_METADATA) != recorded.get("sha256"):
        problems.append(f"{recorded['filename']}'s sha256 metadata differs from the manifest's")
    return problems


def require_complete_copy(client: Any, bucket: str, key: str, *, sha256_hex: str, size: int) -> OffsiteCopyStatus:
    """:func:`offsite_copy_status` for a copy just made: raises OffsiteError unless it is complete."""
    status = offsite_copy_status(client, bucket, key, expected_sha256=sha256_hex, expected_bytes=size)
    if not status.complete:
        raise OffsiteError(
            f"the offsite copy is not verified: {status.summary()}. Run offsite_backup_copy again; if it keeps "
            "failing, check the S3 endpoint and the bucket's permissions for PutObject/GetObject"
        )
    return status


def verify_remote_copy(
    client: Any,
    bucket: str,
    key: str,
    path: Path,
    sha256_hex: str,
    *,
    expected_checksum: str,
) -> tuple[int, str]:
    """HEAD the object and compare its size, ChecksumSHA256 and sha256 metadata with the local file.

    ``expected_checksum`` is what S3 should report (see ``expected_s3_checksum``). Returns
    (size, ChecksumSHA256) or raises OffsiteError naming every difference.
    """
    try:
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except S3_ERRORS as exc:
        raise OffsiteError(f"s3://{bucket}/{key} cannot be read back after the upload: {explain(exc, bucket)}") from None
    size = Path(path).stat().st_size
    remote_size = int(head["ContentLength"])
    remote_checksum = head.get("ChecksumSHA256") or ""
    problems = []
    if remote_size != size:
        problems.append(f"size {remote_size} != local {size}")
    # Some S3-compatible stores omit the "-<parts>" suffix of a multipart checksum; the digest must match.
    if remote_checksum.split("-")[0] != expected_checksum.split("-")[0]:
        problems.append(f"ChecksumSHA256 {remote_checksum or 'missing'} != expected {expected_checksum}")
    if (head.get("Metadata") or {}).get(SHA256_METADATA) != sha256_hex:
        problems.append(f"x-amz-meta-{SHA256_METADATA} is missing or differs from the local file's SHA-256")
    if problems:
        raise OffsiteError(f"s3://{bucket}/{key} does not match the local backup: {'; '.join(problems)}")
    return remote_size, remote_checksum


def part_checksums(path: Path, part_bytes: int) -> tuple[list[tuple[int, str]], str]:
    """Each part's (size, base64 SHA-256) for ``path`` cut into ``part_bytes`` parts, and S3's composite
    ``ChecksumSHA256`` of a multipart object made of them (``<base64>-<parts>``)."""
    parts, digests = [], []
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(part_bytes), b""):
            digests.append(hashlib.sha256(block).digest())
            parts.append((len(block), base64.b64encode(digests[-1]).decode()))
    if not parts:
        digests.append(hashlib.sha256(b"").digest())
        parts.append((0, base64.b64encode(digests[-1]).decode()))
    return parts, f"{base64.b64encode(hashlib.sha256(b''.join(digests)).digest()).decode()}-{len(digests)}"
