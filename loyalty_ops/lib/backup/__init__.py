"""Backups: file naming, the streaming dump pipeline, integrity checks and the offsite copy."""
