"""Retention: a readable plan of what to keep and delete (``retention_plan``), and its execution
(``retention_cleanup``) for local backups, S3 objects, stale multipart uploads and logs."""
