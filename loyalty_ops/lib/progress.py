"""Progress reporting for long byte streams: bytes done, percent of the expected size, rate and ETA.

A :class:`ProgressMeter` is fed byte counts and calls its ``emit`` callback at most every
``interval_s`` seconds (and once at the end), so a 3 AM reader of the run log sees that a dump,
upload or restore is alive and how long it still needs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from loyalty_ops.lib.formatting import human_bytes


@dataclass(frozen=True)
class ProgressSnapshot:
    label: str
    done_bytes: int
    expected_bytes: Optional[int]
    elapsed_s: float

    @property
    def rate_bps(self) -> float:
        return self.done_bytes / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def percent(self) -> Optional[float]:
        if not self.expected_bytes:
            return None
        return min(100.0 * self.done_bytes / self.expected_bytes, 100.0)

    @property
    def eta_s(self) -> Optional[float]:
        if not self.expected_bytes or self.rate_bps <= 0:
            return None
        return max(self.expected_bytes - self.done_bytes, 0) / self.rate_bps

    def message(self) -> str:
        parts = [f"{self.label}: {human_bytes(self.done_bytes)}"]
        if self.expected_bytes:
            parts.append(f"of ~{human_bytes(self.expected_bytes)} ({self.percent:.0f}%)")
        parts.append(f"at {human_bytes(self.rate_bps)}/s")
        if self.eta_s is not None:
            parts.append(f"ETA {self.eta_s:.0f} s")
        parts.append(f"elapsed {self.elapsed_s:.0f} s")
        return ", ".join(parts)


class ProgressMeter:
    """Counts bytes and reports at most every ``interval_s`` seconds. Thread-safe."""

    def __init__(
        self,
        label: str,
        emit: Optional[Callable[[ProgressSnapshot], None]],
        *,
        expected_bytes: Optional[int] = None,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label = label
        self.expected_bytes = expected_bytes
        self._emit = emit
        self._interval = interval_s
        self._clock = clock
        self._start = clock()
        self._last_emit = self._start
        self._done = 0
        self._lock = threading.Lock()

    @property
    def done_bytes(self) -> int:
        return self._done

    def snapshot(self) -> ProgressSnapshot:
        return ProgressSnapshot(self.label, self._done, self.expected_bytes, self._clock() - self._start)

    def add(self, n: int) -> None:
        with self._lock:
            self._done += n
            now = self._clock()
            due = now - self._last_emit >= self._interval
            if due:
                self._last_emit = now
        if due and self._emit:
            self._emit(self.snapshot())

    def finish(self) -> ProgressSnapshot:
        snap = self.snapshot()
        if self._emit:
            self._emit(snap)
        return snap
