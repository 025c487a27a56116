"""Fixtures for the alerting tests: PagerDuty (HTTPS), Slack and a webhook receiver on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from loyalty_ops_tests.lib.alerting.http_recorder import RecordingServer, self_signed_certificate


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("alerting-tls"))


@pytest.fixture
def pagerduty_server(tls_cert) -> Iterator[RecordingServer]:
    """PagerDuty's Events API stand-in. HTTPS, because PagerDuty's client only accepts https:// URLs."""
    with RecordingServer(tls=tls_cert) as server:
        yield server


@pytest.fixture
def slack_server() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


@pytest.fixture
def webhook_server() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server
