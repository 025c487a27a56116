"""Re-checking, right before retention deletes anything, the copies its plan relies on (I/O).

- A **local file** is re-hashed (SHA-256 of the whole file as it is on disk now) and compared with its
  ``.sha256`` sidecar and with the checksum the backup history recorded; sidecar and history must agree.
- An **S3 object** is not downloaded: a HEAD (with ``ChecksumMode=ENABLED``) and a GET of its small
  ``.sha256`` sidecar are compared with what was recorded: its size with the local file's (or the
  recorded size); the sidecar's checksum, the object's ``sha256`` user metadata (when present) and the
  history's checksum must agree; and the object's content must be tied to that checksum by its
  ``sha256`` metadata, by a single-part ``ChecksumSHA256`` (the SHA-256 of the bytes) or by the multipart
  ``ChecksumSHA256`` that ``offsite_backup_copy`` recorded after verifying the upload.

The results are evidence for the pure planner (``gates.apply_reverification``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
import time
from pathlib import Path
from typing import Any, Optional

from loyalty_ops.lib.retention.types import INCOMPLETE, LOCAL, MATCHES, MISMATCH, Reverification, ReverifyRequest
from loyalty_ops.lib.backup.location import BackupLocation

CHUNK_BYTES = 1024 * 1024
SIDECAR_MAX_BYTES = 64 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


def sidecar_checksum(text: str) -> Optional[str]:
    """The hex SHA-256 at the start of a ``sha256sum``-style line, or None."""
    parts = text.split()
    token = parts[0].lower() if parts else ""
    return token if _HEX64.fullmatch(token) else None


def _short(hex_digest: Optional[str]) -> str:
    return hex_digest if hex_digest else "none"


def rehash_local(backup_dir: Path, request: ReverifyRequest, stats: Optional[dict] = None) -> Reverification:
    path = Path(backup_dir) / request.name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return Reverification(INCOMPLETE, f"{request.name} is gone from {backup_dir} since it was listed")
    if not stat.S_ISREG(st.st_mode):
        return Reverification(INCOMPLETE, f"{request.name} is no longer a regular file")
    sidecar_hex = None
    if request.sidecar:
        try:
            with open(Path(backup_dir) / request.sidecar, "r", errors="replace") as fh:
                sidecar_hex = sidecar_checksum(fh.read(SIDECAR_MAX_BYTES))
        except OSError:
            sidecar_hex = None
        if sidecar_hex is None:
            return Reverification(MISMATCH, f"its sidecar {request.sidecar} cannot be read or holds no SHA-256")
    recorded = request.recorded.sha256
    if sidecar_hex and recorded and sidecar_hex != recorded:
        return Reverification(
            MISMATCH, f"its sidecar {request.sidecar} says sha256 {sidecar_hex}, the backup history recorded {recorded}"
        )
    expected = sidecar_hex or recorded
    source = " and ".join(s for s, v in (("its .sha256 sidecar", sidecar_hex), ("the backup history", recorded)) if v)
    if expected is None:
        return Reverification(INCOMPLETE, "no .sha256 sidecar and no checksum in the backup history to compare it with")
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(block)
            size += len(block)
    actual = digest.hexdigest()
    if stats is not None:
        stats["bytes_hashed"] = stats.get("bytes_hashed", 0) + size
    recorded_size = request.recorded.bytes
    size_note = f"{size:,} bytes on disk" + (f", {recorded_size:,} recorded" if recorded_size is not None else "")
    if actual != expected or (recorded_size is not None and size != recorded_size):
        return Reverification(MISMATCH, f"expected sha256 {expected} ({source}), found {actual} ({size_note})")
    return Reverification(MATCHES, f"sha256 {actual} ({size:,} bytes) matches {source}")


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) or type(exc).__name__


def check_remote(client: Any, bucket: str, request: ReverifyRequest) -> Reverification:
    uri = f"s3://{bucket}/{request.name}"
    try:
        head = client.head_object(Bucket=bucket, Key=request.name, ChecksumMode="ENABLED")
    except Exception as exc:
        code = _code(exc)
        if code in ("404", "NoSuchKey", "NotFound"):
            return Reverification(INCOMPLETE, f"{uri} is gone since it was listed")
        return Reverification(INCOMPLETE, f"HEAD {uri} failed ({code})")
    size = int(head.get("ContentLength", -1))
    meta_hex = (head.get("Metadata") or {}).get("sha256")
    s3_checksum = head.get("ChecksumSHA256") or ""
    sidecar_hex = None
    incomplete: list[str] = []
    if request.sidecar is None:
        incomplete.append(f"its .sha256 sidecar is missing on S3 ({request.name}.sha256)")
    else:
        try:
            body = client.get_object(Bucket=bucket, Key=request.sidecar)["Body"].read(SIDECAR_MAX_BYTES)
            sidecar_hex = sidecar_checksum(body.decode("utf-8", errors="replace"))
        except Exception as exc:
            incomplete.append(f"its sidecar {request.sidecar} cannot be read ({_code(exc)})")
        else:
            if sidecar_hex is None:
                incomplete.append(f"its sidecar {request.sidecar} holds no SHA-256")

    problems: list[str] = []
    expected_size = request.local_size if request.local_size is not None else request.recorded.bytes
    if expected_size is not None and size != expected_size:
        problems.append(f"size {size:,} bytes, expected {expected_size:,}")
    claims = [("the backup history", request.recorded.sha256), ("the .sha256 sidecar on S3", sidecar_hex),
              ("the object's sha256 metadata", meta_hex)]
    reference_source, reference = next(((s, v) for s, v in claims if v), ("", None))
    for source, value in claims:
        if value and value != reference:
            problems.append(f"{source} says sha256 {value}, {reference_source} {reference}")
    bound = bool(meta_hex and meta_hex == reference)
    if s3_checksum and reference:
        digest = s3_checksum.split("-")[0]
        if "-" not in s3_checksum:
            try:
                single = binascii.hexlify(base64.b64decode(digest)).decode()
            except (binascii.Error, ValueError):
                single = ""
            if single != reference:
                problems.append(f"ChecksumSHA256 is sha256 {_short(single)}, expected {reference}")
            bound = True
        elif request.recorded.s3_checksum:
            if digest != request.recorded.s3_checksum.split("-")[0]:
                problems.append(f"ChecksumSHA256 {s3_checksum}, recorded after the upload {request.recorded.s3_checksum}")
            bound = True
    if reference is None:
        incomplete.append("no checksum recorded anywhere to compare it with")
    elif not bound and not problems:
        incomplete.append("nothing ties its content to the checksum (no sha256 metadata, no comparable ChecksumSHA256)")
    if problems:
        return Reverification(MISMATCH, f"{uri}: " + "; ".join(problems))
    if incomplete:
        return Reverification(INCOMPLETE, f"{uri}: " + "; ".join(incomplete))
    return Reverification(MATCHES, f"{uri}: {size:,} bytes, sha256 {reference} agrees with {reference_source}")


def reverify(
    requests: tuple[ReverifyRequest, ...],
    *,
    location: BackupLocation,
    client: Any = None,
    stats: Optional[dict] = None,
) -> dict[tuple[str, str], Reverification]:
    """Re-check every requested copy (files in ``location``'s directory, objects in its bucket); results
    keyed by (location, backup file name)."""
    backup_dir, bucket = location.backup_dir, location.bucket
    stats = stats if stats is not None else {}
    started = time.monotonic()
    results: dict[tuple[str, str], Reverification] = {}
    for request in requests:
        key = (request.location, request.filename)
        if key in results:
            continue
        if request.location == LOCAL:
            results[key] = rehash_local(backup_dir, request, stats)
        elif client is None or not bucket:
            results[key] = Reverification(INCOMPLETE, "no S3 client to check the offsite copy with")
        else:
            stats["s3_requests"] = stats.get("s3_requests", 0) + 1 + (request.sidecar is not None)
            results[key] = check_remote(client, bucket, request)
    stats["seconds"] = round(time.monotonic() - started, 3)
    return results
