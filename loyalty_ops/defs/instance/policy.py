"""Which of Dagster's own runs to forget, and which compute logs to drop (pure logic, no dagster import).

Runs that materialized the assets whose history other domains read back (`recent_backups`, retention
plans, the morning report) are kept longer than the rest. Active runs are never touched: only finished
ones are considered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum


class Verdict(str, Enum):
    KEEP = "keep"
    DELETE_RUN = "delete_run"  # run record, its events and its compute logs
    DELETE_LOGS = "delete_logs"  # compute logs only; the run and its events stay


@dataclass(frozen=True)
class HistoryPolicy:
    run_days: int = 90
    asset_run_days: int = 400
    compute_log_days: int = 30

    def problems(self) -> list[str]:
        """Human-readable reasons this policy is unsafe; empty when it is fine."""
        out = []
        if self.run_days < 1:
            out.append(f"older_than_days must be at least 1 (got {self.run_days}): runs younger than a day are kept")
        if self.asset_run_days < self.run_days:
            out.append(
                f"keep_asset_runs_days ({self.asset_run_days}) must be >= older_than_days ({self.run_days}): "
                "runs that materialized assets are kept at least as long as the others"
            )
        if self.compute_log_days < 1:
            out.append(f"compute_log_days must be at least 1 (got {self.compute_log_days})")
        return out

    def run_cutoff(self, now: datetime) -> datetime:
        return now - timedelta(days=self.run_days)

    def asset_run_cutoff(self, now: datetime) -> datetime:
        return now - timedelta(days=self.asset_run_days)

    def log_cutoff(self, now: datetime) -> datetime:
        return now - timedelta(days=self.compute_log_days)

    def verdict(self, created: datetime, now: datetime, *, finished: bool, materialized_assets: bool) -> Verdict:
        if not finished:
            return Verdict.KEEP
        cutoff = self.asset_run_cutoff(now) if materialized_assets else self.run_cutoff(now)
        if created < cutoff:
            return Verdict.DELETE_RUN
        if created < self.log_cutoff(now):
            return Verdict.DELETE_LOGS
        return Verdict.KEEP
