"""Client-side encryption of backups in the age format (https://age-encryption.org), through pyrage (the
Rust ``age`` crate's bindings): nothing here implements cryptography.

A backup is encrypted *after* compression in the same single streaming pass, so the file is
``gunzip``-able once decrypted: ``age -d -i key.txt FILE.dump.gz.age | gunzip | pg_restore`` works with the
stock tools. pyrage's ``encrypt_io``/``decrypt_io`` pull from a reader and push to a writer; :class:`AgeStream`
runs one of them on a thread and gives it the same push shape as a compressor (``compress(data) -> bytes``,
``flush() -> bytes``), so it stacks after the compressor (:class:`SealedCompressor`) or before the
decompressor of a restore.

Recipients (public keys, ``age1...`` or ``ssh-ed25519 ...``/``ssh-rsa ...``) are all a backup needs; the
identity (the private key file) is needed only to restore, to drill and to check an encrypted file's
plaintext. It is a secret: its path and content never go to a log, metadata or a process's arguments.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pyrage

AGE_SUFFIX = ".age"
AGE_MAGIC = b"age-encryption.org/v1\n"
_EOF = None


class EncryptionConfigError(ValueError):
    """A recipient or identity is unusable; the message names the setting and never shows a secret."""


def parse_recipients(text: str, variable: str = "LOYALTY_BACKUP_AGE_RECIPIENTS") -> list[Any]:
    """Public keys separated by commas or new lines: ``age1...`` (X25519) or an OpenSSH public key line."""
    items = [item.strip() for chunk in (text or "").splitlines() for item in chunk.split(",")]
    items = [item for item in items if item and not item.startswith("#")]
    if not items:
        raise EncryptionConfigError(f"{variable} is empty: give at least one age public key (age1...)")
    recipients = []
    for item in items:
        try:
            if item.startswith("ssh-"):
                recipients.append(pyrage.ssh.Recipient.from_str(item))
            else:
                recipients.append(pyrage.x25519.Recipient.from_str(item))
        except Exception:
            shown = item if len(item) <= 80 else item[:77] + "..."
            raise EncryptionConfigError(
                f"{variable} holds a malformed recipient {shown!r}: expected an age public key like "
                "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p (age-keygen -y key.txt prints it)"
            ) from None
    return recipients


def load_identities(path: str | Path, variable: str = "LOYALTY_BACKUP_AGE_IDENTITY_FILE") -> list[Any]:
    """The identities (``AGE-SECRET-KEY-1...`` lines, as ``age-keygen`` writes) of an identity file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EncryptionConfigError(f"{variable} names a file that does not exist; create it with age-keygen -o FILE") from None
    except OSError as exc:
        raise EncryptionConfigError(f"{variable} cannot be read ({exc.strerror}); check its permissions") from None
    identities = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except Exception:
            raise EncryptionConfigError(
                f"{variable} holds a line that is not an age identity (AGE-SECRET-KEY-1...); the file must be what "
                "age-keygen writes"
            ) from None
    if not identities:
        raise EncryptionConfigError(f"{variable} holds no age identity (AGE-SECRET-KEY-1...)")
    return identities


def is_encrypted_name(name: str) -> bool:
    return name.endswith(AGE_SUFFIX)


class _Reader:
    """What pyrage reads from: chunks put by the producing thread, handed out as asked."""

    def __init__(self) -> None:
        self.chunks: "queue.Queue[Optional[bytes]]" = queue.Queue(maxsize=8)
        self._buf = memoryview(b"")
        self._pos = 0
        self.done = False

    def read(self, n: int = -1) -> bytes:
        # pyrage asks for a few KiB at a time: hand out slices of the current chunk by offset (slicing off the
        # rest each time would copy a 4 MiB chunk hundreds of times).
        while self._pos >= len(self._buf) and not self.done:
            chunk = self.chunks.get()
            if chunk is _EOF:
                self.done = True
            else:
                self._buf, self._pos = memoryview(chunk), 0
        if n is None or n < 0:
            n = len(self._buf) - self._pos
        out = self._buf[self._pos : self._pos + n].tobytes()
        self._pos += len(out)
        return out


class _Writer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: list[bytes] = []

    def write(self, data) -> int:
        with self._lock:
            self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        with self._lock:
            out, self._parts = b"".join(self._parts), []
        return out


class AgeStream:
    """Encrypts (to ``recipients``) or decrypts (with ``identities``) a stream pushed in chunks: ``compress``
    takes plaintext (or ciphertext) and returns what is ready, ``flush`` ends the stream and returns the
    rest. Raises ValueError when decryption fails (wrong key, a corrupt or truncated file)."""

    def __init__(self, *, recipients: Optional[Sequence[Any]] = None, identities: Optional[Sequence[Any]] = None):
        if (recipients is None) == (identities is None):
            raise ValueError("give recipients (to encrypt) or identities (to decrypt)")
        self._reader, self._writer = _Reader(), _Writer()
        self._error: Optional[BaseException] = None
        self._encrypting = recipients is not None
        keys = list(recipients if recipients is not None else identities)  # type: ignore[arg-type]
        run = pyrage.encrypt_io if self._encrypting else pyrage.decrypt_io
        self._thread = threading.Thread(target=self._run, args=(run, keys), name="age-stream", daemon=True)
        self._thread.start()

    def _run(self, run: Callable, keys: list) -> None:
        try:
            run(self._reader, self._writer, keys)
        except BaseException as exc:
            self._error = exc
            # Keep consuming (until the end, unless it was already read) so the producer never blocks.
            while not self._reader.done and self._reader.chunks.get() is not _EOF:
                pass

    def compress(self, data: bytes) -> bytes:
        if self._error is None and data:
            self._reader.chunks.put(bytes(data))
        self._raise()
        return self._writer.take()

    decrypt = compress
    encrypt = compress

    def flush(self) -> bytes:
        self._reader.chunks.put(_EOF)
        self._thread.join()
        self._raise()
        return self._writer.take()

    def abort(self) -> None:
        if self._thread.is_alive():
            self._reader.chunks.put(_EOF)
            self._thread.join(30)

    def _raise(self) -> None:
        if self._error is not None:
            what = "encrypting" if self._encrypting else "decrypting (wrong identity, or a corrupt or truncated file)"
            raise ValueError(f"age failed {what}: {self._error}")


class SealedCompressor:
    """A compressor followed by age encryption: the same ``compress``/``flush`` shape. ``tap`` sees every
    compressed block before it is encrypted (the in-pass checks of an encrypted backup)."""

    def __init__(self, compressor: Any, recipients: Sequence[Any], tap: Optional[Callable[[bytes], None]] = None):
        self._compressor = compressor
        self._age = AgeStream(recipients=recipients)
        self._tap = tap

    def compress(self, data: bytes) -> bytes:
        block = self._compressor.compress(data)
        if block and self._tap is not None:
            self._tap(block)
        return self._age.compress(block) if block else self._age.compress(b"")

    def flush(self) -> bytes:
        tail = self._compressor.flush()
        if tail and self._tap is not None:
            self._tap(tail)
        return self._age.compress(tail) + self._age.flush()


def seal_bytes(data: bytes, recipients: Sequence[Any]) -> bytes:
    """A small payload (the globals file) as one age file."""
    return pyrage.encrypt(data, list(recipients))


def unseal_bytes(data: bytes, identities: Sequence[Any]) -> bytes:
    try:
        return pyrage.decrypt(data, list(identities))
    except Exception as exc:
        raise ValueError(f"age failed decrypting (wrong identity, or a corrupt file): {exc}") from None
