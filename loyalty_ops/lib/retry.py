"""The one retry policy for everything that is not S3 (S3 requests retry inside botocore: the client's
``standard`` retry mode, see ``loyalty_ops.lib.backup.offsite``).

A :class:`RetryPolicy` says how many tries in all and how long to wait before each retry; :meth:`attempts`
yields the attempt numbers and sleeps in between, so a caller writes one ``for`` loop and breaks out when
its step succeeded. Retries are never stacked: a step retried here calls clients whose own retry loops are
turned off.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterator, Optional

# Called before each retry with (the attempt about to start, the delay before it); returning False stops
# the retries (a budget that leaves no room for another try), anything else lets them go on.
BeforeRetry = Callable[[int, float], Optional[bool]]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """``max_attempts`` tries in all; the first retry after ``delay_s``, each next one ``backoff`` times
    longer (1: a fixed delay, 2: doubling)."""

    max_attempts: int = 3
    delay_s: float = 1.0
    backoff: float = 1.0

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"a retry policy needs at least 1 attempt, got max_attempts={self.max_attempts!r}; e.g. 3")
        if self.delay_s < 0 or self.backoff < 1:
            raise ValueError(
                f"retry delays must be >= 0 s and must not shrink, got delay_s={self.delay_s!r}, "
                f"backoff={self.backoff!r}; e.g. delay_s=1, backoff=2"
            )

    def delay_before(self, attempt: int) -> float:
        """The pause before ``attempt`` (2 is the first retry; 1 starts at once)."""
        return 0.0 if attempt <= 1 else self.delay_s * self.backoff ** (attempt - 2)

    def is_last(self, attempt: int) -> bool:
        return attempt >= self.max_attempts

    def attempts(self, *, before_retry: Optional[BeforeRetry] = None, sleep: Callable[[float], None] = time.sleep) -> Iterator[int]:
        """1, 2, ... ``max_attempts``, sleeping :meth:`delay_before` each retry. The caller breaks out when
        its step succeeded (or failed in a way not worth retrying)."""
        for attempt in range(1, self.max_attempts + 1):
            if attempt > 1:
                delay = self.delay_before(attempt)
                if before_retry is not None and before_retry(attempt, delay) is False:
                    return
                sleep(delay)
            yield attempt
