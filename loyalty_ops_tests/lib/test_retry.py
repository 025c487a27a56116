"""The one retry policy (everything but S3, which retries inside botocore)."""

import pytest

from loyalty_ops.lib.retry import RetryPolicy


def test_attempts_sleep_before_each_retry_with_backoff():
    slept: list[float] = []
    policy = RetryPolicy(max_attempts=4, delay_s=0.5, backoff=2.0)
    assert list(policy.attempts(sleep=slept.append)) == [1, 2, 3, 4]
    assert slept == [0.5, 1.0, 2.0]  # nothing before the first try
    assert policy.is_last(4) and not policy.is_last(3)


def test_breaking_out_after_a_success_sleeps_no_more():
    slept: list[float] = []
    tries = []
    for attempt in RetryPolicy(max_attempts=5, delay_s=1.0).attempts(sleep=slept.append):
        tries.append(attempt)
        if attempt == 2:  # the step succeeded
            break
    assert tries == [1, 2] and slept == [1.0]


def test_before_retry_sees_each_retry_and_can_stop_them():
    seen: list[tuple[int, float]] = []
    slept: list[float] = []

    def budget_allows(attempt: int, delay_s: float) -> bool:
        seen.append((attempt, delay_s))
        return delay_s < 3  # a budget with room for a 1 s and a 2 s pause only

    policy = RetryPolicy(max_attempts=5, delay_s=1.0, backoff=2.0)
    assert list(policy.attempts(before_retry=budget_allows, sleep=slept.append)) == [1, 2, 3]
    assert seen == [(2, 1.0), (3, 2.0), (4, 4.0)] and slept == [1.0, 2.0]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [(dict(max_attempts=0), "max_attempts=0"), (dict(delay_s=-1), "delay_s=-1"), (dict(backoff=0.5), "backoff=0.5")],
)
def test_a_bad_policy_is_refused_naming_the_value(kwargs, named):
    with pytest.raises(ValueError, match="e.g.") as caught:
        RetryPolicy(**kwargs)
    assert named in str(caught.value)
