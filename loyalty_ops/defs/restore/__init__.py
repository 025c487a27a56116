"""Restores: the guarded ``restore_job`` launched from the UI, and the automatic ``restore_drill``."""
