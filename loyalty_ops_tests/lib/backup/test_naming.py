from datetime import datetime, timezone

import pytest

from loyalty_ops.lib.backup.naming import backup_name, parse_backup_name


def test_names_follow_the_guide_and_round_trip():
    name = backup_name("loyalty", datetime(2026, 11, 27, 2, 0, 5, 123, tzinfo=timezone.utc))
    assert name.filename == "loyalty_20261127_020005.dump.gz"
    assert name.s3_key("backups/") == "backups/2026/11/27/loyalty_20261127_020005.dump.gz"
    assert name.s3_key("/a/b") == "a/b/2026/11/27/loyalty_20261127_020005.dump.gz"
    assert parse_backup_name(name.filename) == name
    assert backup_name("loyalty", name.taken_at, "zstd").filename.endswith(".dump.zst")


@pytest.mark.parametrize(
    "filename",
    ["loyalty_20261127_020005.dump.gz.sha256", ".loyalty_20261127_020005.dump.gz.partial-12", "notes.txt",
     "loyalty_2026112_020005.dump.gz", "loyalty_20261127_020005.dump"],
)
def test_other_files_are_not_backups(filename):
    assert parse_backup_name(filename) is None


def test_bad_database_name_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="letters, digits"):
        backup_name("my db", datetime.now(timezone.utc))
