"""Restores: validating a restore request, fetching and checking the archive, pg_restore, and the drill."""
