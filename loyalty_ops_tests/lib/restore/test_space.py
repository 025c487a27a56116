"""The space check's arithmetic on real filesystems: needs on one filesystem add up, each filesystem is judged
on its own, the refusal names the directory and the numbers."""

from __future__ import annotations

import pytest

from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.restore.space import (
    NotEnoughSpace,
    SpaceNeed,
    expected_database_bytes,
    measure,
    refuse_unless_fits,
    server_data_volume,
)
from loyalty_ops_tests.helpers import mounted_tmpfs

MiB = 1024 * 1024


@pytest.fixture
def tmpfs(tmp_path):
    where = tmp_path / "disk"
    where.mkdir()
    with mounted_tmpfs(where, 8 * MiB, mode="1777"):
        yield where


def test_needs_on_one_filesystem_add_up_and_each_filesystem_is_judged_alone(tmpfs, tmp_path):
    fits = measure([
        SpaceNeed("download", tmpfs / "work", 3 * MiB),  # not created yet: its parent's filesystem counts
        SpaceNeed("decompressed archive", tmpfs, 3 * MiB),
        SpaceNeed("restored database", tmp_path, 3 * MiB),  # another filesystem
    ])
    assert len(fits.volumes) == 2 and fits.fits
    small = next(v for v in fits.volumes if str(v.path).startswith(str(tmpfs)))
    assert small.needed_bytes == 6 * MiB and small.free_bytes == 8 * MiB and small.headroom_bytes == 8 * MiB // 10
    refuse_unless_fits(fits)  # no exception

    too_much = measure([SpaceNeed("download", tmpfs, 4 * MiB), SpaceNeed("decompressed archive", tmpfs / "x", 4 * MiB)])
    assert not too_much.fits
    with pytest.raises(NotEnoughSpace) as refused:
        refuse_unless_fits(too_much, advice="Free space there.")
    message = str(refused.value)
    assert refused.value.step == "check space" and "Nothing was changed" in message
    assert f"{tmpfs}: needs 8.0 MB (download 4.0 MB + decompressed archive 4.0 MB)" in message and "8.0 MB free" in message


def test_the_expected_database_size_is_the_source_s_else_an_estimate_said_to_be_one():
    assert expected_database_bytes(5_000_000, 1_000_000) == (5_000_000, False, "the source database's current size (pg_database_size)")
    size, estimated, basis = expected_database_bytes(None, 1_000_000)
    assert size == 2_500_000 and estimated and "unknown" in basis


def test_a_remote_server_s_data_volume_is_not_guessed():
    volume = server_data_volume(None, ConnectionSpec(host="db.example.com"))  # type: ignore[arg-type]
    assert volume.path is None and "not on this machine" in volume.why_not
