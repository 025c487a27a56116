"""Errors of a restore, each naming the step that failed and whether anything was changed."""

from __future__ import annotations


class RestoreStepError(RuntimeError):
    """A restore step failed. ``step`` names it; ``touched`` says whether any database was changed."""

    def __init__(self, step: str, message: str, *, touched: bool = False):
        super().__init__(f"{step}: {message}")
        self.step = step
        self.detail = message
        self.touched = touched


class RestoreRefused(RestoreStepError):
    """The restore was refused before anything was changed (no database created, dropped or written)."""

    def __init__(self, step: str, message: str):
        self.reason = message.rstrip().rstrip(".")  # without "Nothing was changed.", to quote in a longer message
        message = message.rstrip()
        if not message.endswith("."):
            message += "."
        super().__init__(step, message + " Nothing was changed.", touched=False)


class BackupNotFound(RestoreRefused):
    pass


class ChecksumMismatch(RestoreRefused):
    pass


class MissingKey(RestoreRefused):
    """The backup is encrypted and no identity (private key) was given: refused, never passed over for an
    older unencrypted backup."""


class IncompleteBackup(RestoreRefused):
    """A backup without its manifest (or sidecar) where a complete one is required."""
