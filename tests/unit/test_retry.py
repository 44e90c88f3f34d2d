from __future__ import annotations

import pytest

from airflow_bettertoken.exceptions import BetterTokenConfigError
from airflow_bettertoken.protocol.retry import (
    Failure,
    RetryPolicy,
    backoff_seconds,
    decide,
    is_retryable_status,
    retry_after_seconds,
)

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After-Ms": "250"}, 0.25),
        ({"retry-after": "7"}, 7.0),
        ({"Retry-After": "2.5"}, 2.5),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:50 GMT"}, 30.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:13:00 GMT"}, 0.0),  # in the past
        ({"retry-after-ms": "2000", "retry-after": "60"}, 2.0),  # ms wins
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),  # bad ms falls back
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "not a date"}, None),
        ({}, None),
    ],
    ids=[
        "ms",
        "ms-mixed-case",
        "seconds",
        "fractional-seconds",
        "http-date",
        "http-date-past",
        "ms-before-seconds",
        "bad-ms-falls-back",
        "negative",
        "garbage",
        "absent",
    ],
)
def test_parse_retry_after_header(headers, expected):
    assert retry_after_seconds(headers, NOW) == expected


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (408, {}, True),
        (409, {}, True),
        (425, {}, True),
        (429, {}, True),
        (500, {}, True),
        (502, {}, True),
        (503, {}, True),
        (504, {}, True),
        (529, {}, True),
        (400, {}, False),
        (401, {}, False),
        (403, {}, False),
        (404, {}, False),
        (422, {}, False),
        (400, {"x-should-retry": "true"}, True),
        (503, {"X-Should-Retry": "false"}, False),
        (503, {"x-should-retry": "maybe"}, True),
    ],
)
def test_is_retryable_status(status, headers, expected):
    assert is_retryable_status(status, headers) is expected


def test_backoff_grows_to_the_providers_suggested_waits_and_is_capped():
    policy = RetryPolicy()
    waits = [backoff_seconds(n, policy, random_fraction=0.0) for n in range(1, 6)]
    assert waits == [3.0, 7.5, 15.0, 15.0, 15.0]
    assert backoff_seconds(1, policy, random_fraction=0.999) == pytest.approx(3.0 * 0.75, rel=1e-2)


RETRY_CASES = [
    # (outcome, attempt, elapsed, retry?, wait, reason contains)
    ({"status": 429, "headers": {"retry-after": "5"}}, 1, 0, True, 5.0, "status 429"),
    ({"status": 503}, 1, 0, True, 3.0, "status 503"),
    ({"status": 503}, 2, 0, True, 7.5, "status 503"),
    ({"status": 503}, 4, 0, False, 0.0, "gave up after 4"),
    ({"status": 401}, 1, 0, False, 0.0, "status 401 is not retried"),
    ({"status": 400}, 1, 0, False, 0.0, "status 400 is not retried"),
    ({"status": 429, "headers": {"retry-after": "3600"}}, 1, 0, False, 3600.0, "retry_after_cap=120"),
    ({"status": 503}, 1, 3599, False, 3.0, "deadline=3600"),
    ({"failure": Failure.NOT_SENT}, 1, 0, True, 3.0, "not sent"),
    ({"failure": Failure.MAYBE_BILLED}, 1, 0, True, 3.0, "maybe billed"),
    ({"failure": Failure.MAYBE_BILLED}, 4, 0, False, 0.0, "gave up after 4"),
]


@pytest.mark.parametrize(
    ("outcome", "attempt", "elapsed", "retry", "wait", "reason"),
    RETRY_CASES,
    ids=[
        "429-retry-after",
        "503-first-backoff",
        "503-second-backoff",
        "503-budget-spent",
        "401-never",
        "400-never",
        "wait-over-cap-fails-at-once",
        "deadline",
        "not-sent",
        "maybe-billed",
        "maybe-billed-budget-spent",
    ],
)
def test_decide(outcome, attempt, elapsed, retry, wait, reason):
    decision = decide(
        RetryPolicy(), attempt=attempt, elapsed=elapsed, now=NOW, random_fraction=0.0, **outcome
    )
    assert decision.retry is retry
    assert decision.wait == wait
    assert reason in decision.reason


def test_maybe_billed_retries_can_be_turned_off():
    policy = RetryPolicy(retry_maybe_billed=False)
    decision = decide(policy, attempt=1, elapsed=0, failure=Failure.MAYBE_BILLED, now=NOW, random_fraction=0)
    assert not decision.retry
    assert decide(policy, attempt=1, elapsed=0, failure=Failure.NOT_SENT, now=NOW, random_fraction=0).retry


def test_options_override_in_order_and_ignore_foreign_keys():
    policy = RetryPolicy().with_options({"max_attempts": 2, "timeout": 900}).with_options({"deadline": 60})
    assert (policy.max_attempts, policy.deadline) == (2, 60)


@pytest.mark.parametrize(
    "options",
    [{"max_attempts": 0}, {"max_attempts": "4"}, {"deadline": -1}, {"jitter": 2}, {"max_atempts": 3}],
    ids=["zero-attempts", "attempts-as-text", "negative-deadline", "jitter-over-1", "misspelt-key"],
)
def test_bad_options_are_refused_with_the_allowed_ones(options):
    with pytest.raises(BetterTokenConfigError, match=r"max_attempts|deadline|jitter"):
        RetryPolicy.check_options(options)
