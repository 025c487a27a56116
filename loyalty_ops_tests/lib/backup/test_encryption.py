"""The age layer: same push shape as a compressor, the stock `age` CLI reads what it writes, a wrong key or a
truncated file is refused, and a restore's passes decrypt an encrypted backup only with the identities."""

from __future__ import annotations

import gzip
import os
import subprocess

import pyrage
import pytest

from loyalty_ops.lib.backup.dump import BackupRequest, take_backup
from loyalty_ops.lib.backup.encryption import (
    AGE_MAGIC,
    AgeStream,
    EncryptionConfigError,
    SealedCompressor,
    load_identities,
    parse_recipients,
)
from loyalty_ops.lib.backup.stream import make_compressor
from loyalty_ops.lib.restore.errors import ChecksumMismatch, MissingKey, RestoreRefused
from loyalty_ops.lib.restore.archive_passes import prepare_archive, stream_archive, verify_archive
from loyalty_ops.lib.restore.source import release_work_file
from loyalty_ops_tests.conftest import postgres_target


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    path = tmp_path_factory.mktemp("age") / "key.txt"
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    return path, public


def _seal(data: bytes, recipients, tap=None) -> bytes:
    sealed = SealedCompressor(make_compressor("gzip"), recipients, tap=tap)
    out = [sealed.compress(data[i : i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
    return b"".join(out) + sealed.flush()


def test_sealed_stream_is_what_the_age_cli_and_gunzip_read_back(key, tmp_path):
    path, public = key
    data = os.urandom(1 << 20) + b"member17@example.co.zw" * 100_000
    taps: list[bytes] = []
    sealed = _seal(data, parse_recipients(public), taps.append)
    assert sealed.startswith(AGE_MAGIC) and b"member17" not in sealed
    (tmp_path / "x.gz.age").write_bytes(sealed)
    plain = subprocess.run(["age", "-d", "-i", str(path), str(tmp_path / "x.gz.age")], check=True, capture_output=True).stdout
    assert plain == b"".join(taps) and gzip.decompress(plain) == data  # the tap saw exactly what was encrypted


def test_a_wrong_key_or_a_truncated_file_is_refused(key):
    path, public = key
    sealed = _seal(b"x" * 300_000, parse_recipients(public))
    wrong = AgeStream(identities=[pyrage.x25519.Identity.generate()])
    with pytest.raises(ValueError, match="age failed decrypting"):
        wrong.compress(sealed)
        wrong.flush()
    cut = AgeStream(identities=load_identities(path))
    with pytest.raises(ValueError, match="age failed decrypting"):
        cut.compress(sealed[:-50])
        cut.flush()


def test_malformed_recipients_and_identity_files_are_refused_without_showing_the_key(tmp_path):
    with pytest.raises(EncryptionConfigError, match="malformed recipient 'age1nope'"):
        parse_recipients("age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p, age1nope")
    bad = tmp_path / "bad.txt"
    bad.write_text("AGE-SECRET-KEY-1SECRETSECRET\n")
    with pytest.raises(EncryptionConfigError) as refused:
        load_identities(bad)
    assert "SECRETSECRET" not in str(refused.value) and str(bad) not in str(refused.value)


def test_restore_passes_decrypt_only_with_the_identities(key, pg_cluster, loyalty_db, tmp_path):
    path, public = key
    target = postgres_target(pg_cluster, loyalty_db)
    result = take_backup(target.spec(), target.tools(), BackupRequest(backup_dir=tmp_path, age_recipients=public))
    assert result.path.name.endswith(".dump.gz.age") and result.in_pass_checks["archive_complete"] is True
    with pytest.raises(MissingKey, match="LOYALTY_BACKUP_AGE_IDENTITY_FILE"):
        prepare_archive(result.path, result.file.sha256, tmp_path)
    identities = tuple(load_identities(path))
    archive = prepare_archive(result.path, result.file.sha256, tmp_path, identities=identities)
    assert archive.path.read_bytes()[:5] == b"PGDMP" and archive.raw_bytes == result.file.raw_bytes
    release_work_file(archive.path)
    # jobs 1: verified in one pass, streamed (decrypted again) in a second.
    verified = verify_archive(result.path, result.file.sha256, identities=identities)
    streamed: list[bytes] = []
    assert stream_archive(verified, streamed.append) == verified.raw_bytes and b"".join(streamed)[:5] == b"PGDMP"
    with pytest.raises(ChecksumMismatch):
        prepare_archive(result.path, "0" * 64, tmp_path, identities=identities)
    other = tuple([pyrage.x25519.Identity.generate()])
    with pytest.raises(RestoreRefused, match="age failed decrypting"):
        prepare_archive(result.path, result.file.sha256, tmp_path, identities=other)
