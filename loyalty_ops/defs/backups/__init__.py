"""Backups: the nightly dump, its blocking integrity checks, the offsite copy, job and schedule."""
