"""Alerting sensor tests: stand-in servers for PagerDuty, Slack and a webhook, and a real Dagster instance."""

import os
import tempfile
from pathlib import Path
from typing import Iterator

import dagster as dg
import pytest

from loyalty_ops.defs.alerting.dispatch import read_ledger_text
from loyalty_ops_tests.lib.alerting.fixtures import pagerduty_server, slack_server, tls_cert, webhook_server  # noqa: F401


@pytest.fixture(scope="module")
def shared_instance(tmp_path_factory) -> Iterator[dg.DagsterInstance]:
    """One real (SQLite) Dagster instance per module, with a consolidated event log like the production
    PostgreSQL storage (storage ids are global, not per run). Creating an instance costs seconds here, and
    SQLite's fsyncs dominate the runs, so it lives in memory-backed /dev/shm when there is one."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(prefix="loyalty-alerting-", dir=shm) as tmp:
            yield from _instance(Path(tmp))
    else:
        yield from _instance(tmp_path_factory.mktemp("alerting-dagster-home"))


def _instance(base: Path) -> Iterator[dg.DagsterInstance]:
    overrides = {
        "event_log_storage": {
            "module": "dagster.core.storage.event_log",
            "class": "ConsolidatedSqliteEventLogStorage",
            "config": {"base_dir": str(base / "events")},
        }
    }
    with dg.instance_for_test(temp_dir=str(base), overrides=overrides) as instance:
        yield instance


@pytest.fixture
def dagster_instance(shared_instance) -> dg.DagsterInstance:
    """The module's instance, emptied: no runs, no events, no incident ledger (the ledger is kept as an
    asset observation, so wiping the event log empties it)."""
    shared_instance.wipe()
    assert read_ledger_text(shared_instance) is None
    return shared_instance
