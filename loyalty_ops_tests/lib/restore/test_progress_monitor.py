"""The pg_restore progress monitor's arithmetic, fed scripted rows of the progress views."""

from __future__ import annotations

from loyalty_ops.lib.pg.connection import ConnectionSpec
from loyalty_ops.lib.restore.pg_restore import RestoreMonitor, pg_restore_args


class _Rows:
    def __init__(self, rows):
        self._rows = rows

    def fetchall(self):
        return self._rows

    def fetchone(self):
        return self._rows[0]


class FakeConnection:
    """Answers the monitor's two queries from a script: (copy rows, index builds) per poll."""

    def __init__(self, script):
        self.script = list(script)
        self.current = None

    def execute(self, query, *args):
        if "pg_stat_progress_copy" in query:
            self.current = self.script.pop(0)
            return _Rows(self.current[0])
        return _Rows([(self.current[1],)])


def test_monitor_adds_finished_copies_and_reports_phases():
    monitor = RestoreMonitor(ConnectionSpec(), "target", expected_bytes=1000, emit=None)
    conn = FakeConnection(
        [
            ([(1, 10, 100), (2, 11, 50)], 0),  # two tables loading
            ([(1, 10, 300)], 0),  # table 11 finished at 50 (last seen)
            ([(1, 10, 600), (2, 12, 10)], 1),
            ([], 2),  # data done, index builds running: counted as all data loaded
        ]
    )
    monitor._poll(conn)
    assert monitor.progress.loaded_bytes == 150 and monitor.progress.copies == 2
    monitor._poll(conn)
    assert monitor.progress.loaded_bytes == 350
    monitor._poll(conn)
    assert monitor.progress.loaded_bytes == 660 and monitor.progress.index_builds == 1
    assert "66%" in monitor.message() and "2 table(s) loading; 1 index build(s) running" in monitor.message()
    monitor._poll(conn)
    assert monitor.progress.loaded_bytes == 1000 and "100%" in monitor.message()


def test_pg_restore_arguments_carry_no_connection_secrets():
    args = pg_restore_args("/tmp/a.dump", "target", 4, no_owner=True)  # type: ignore[arg-type]
    assert args == ["--exit-on-error", "--jobs=4", "--no-password", "--dbname=target", "--no-owner", "/tmp/a.dump"]
