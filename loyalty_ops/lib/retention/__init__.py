"""Retention: a pure planner that decides what to keep and delete (``plan.py``), and the I/O around it
(``inventory.py`` lists files and S3 objects, ``cleanup.py`` carries a plan out)."""
