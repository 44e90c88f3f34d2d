"""The retry policy: which failures are retried, and how long to wait first.

Pure decisions with no I/O: the hook's loop asks :func:`decide` after every
failed attempt and does what it says. Time and randomness come in as arguments,
so that the tests drive the policy with fixed values.
"""

from __future__ import annotations

import dataclasses
import enum
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from airflow_bettertoken.exceptions import BetterTokenConfigError

__all__ = [
    "Failure",
    "RetryDecision",
    "RetryLoop",
    "RetryPolicy",
    "Timing",
    "decide",
    "is_retryable_status",
]

# Statuses below 500 that are worth another try; every 5xx is, too.
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})


class Failure(enum.Enum):
    """How an attempt failed when no HTTP answer arrived."""

    #: The connection failed before the request was sent: always safe to retry.
    NOT_SENT = "not sent"
    #: A timeout or reset after the request was sent: the image may have been billed.
    MAYBE_BILLED = "maybe billed"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the retry loop. Every field can be set in the connection extra and per operator.

    :param max_attempts: attempts in all, the first included.
    :param deadline: seconds the whole loop may take; no retry starts that would wait past it.
    :param retry_after_cap: the longest server-requested wait honoured; a longer one fails at once.
    :param backoff_initial: the first backoff, in seconds, when the server asks for no wait.
    :param backoff_multiplier: growth of the backoff per retry.
    :param backoff_max: the longest backoff.
    :param jitter: the fraction of the backoff taken off at random, so workers do not retry in step.
    :param retry_maybe_billed: whether to retry a timeout or reset after the request was sent.
    """

    max_attempts: int = 4
    deadline: float = 3600.0
    retry_after_cap: float = 120.0
    backoff_initial: float = 3.0
    backoff_multiplier: float = 2.5
    backoff_max: float = 15.0
    jitter: float = 0.25
    retry_maybe_billed: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or isinstance(self.max_attempts, bool):
            raise BetterTokenConfigError(f"max_attempts must be a whole number, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise BetterTokenConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("deadline", "retry_after_cap", "backoff_initial", "backoff_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise BetterTokenConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if not 0 <= self.jitter <= 1:
            raise BetterTokenConfigError(f"jitter must be between 0 and 1, got {self.jitter!r}")
        if self.backoff_multiplier < 1:
            raise BetterTokenConfigError(f"backoff_multiplier must be >= 1, got {self.backoff_multiplier!r}")

    def with_options(self, options: Mapping[str, Any] | None) -> RetryPolicy:
        """Return a copy with the policy's own keys of ``options`` applied; other keys are left to others."""
        known = {f.name for f in dataclasses.fields(self)}
        changes = {k: v for k, v in (options or {}).items() if k in known and v is not None}
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> list[str]:
        return sorted(f.name for f in dataclasses.fields(cls))

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Refuse keys that are not policy fields, naming the allowed ones (for operator arguments)."""
        unknown = sorted(set(options) - set(cls.field_names()))
        if unknown:
            raise BetterTokenConfigError(f"unknown retry options {unknown}; allowed: {cls.field_names()}")
        cls().with_options(options)


@dataclass(frozen=True)
class RetryDecision:
    """What the loop does next: retry after ``wait`` seconds, or stop, and why."""

    retry: bool
    wait: float = 0.0
    reason: str = ""


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name:
            return value.strip()
    return None


def is_retryable_status(status: int, headers: Mapping[str, str] | None = None) -> bool:
    """Retry 408, 409, 425, 429 and 5xx, unless the server says otherwise in ``x-should-retry``."""
    override = _header(headers, "x-should-retry")
    if override in ("true", "false"):
        return override == "true"
    return status in RETRYABLE_STATUSES or status >= 500


def retry_after_seconds(headers: Mapping[str, str] | None, now: float) -> float | None:
    """The wait the server asked for: ``retry-after-ms``, else ``Retry-After`` in seconds or as a date.

    :param now: the current time as a Unix timestamp, to measure an HTTP date against.
    """
    millis = _header(headers, "retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = _header(headers, "retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


def backoff_seconds(retry_number: int, policy: RetryPolicy, random_fraction: float) -> float:
    """Exponential backoff with jitter; ``retry_number`` counts from 1, ``random_fraction`` is in [0, 1)."""
    base = policy.backoff_initial * policy.backoff_multiplier ** (retry_number - 1)
    return min(policy.backoff_max, base) * (1 - policy.jitter * random_fraction)


def decide(
    policy: RetryPolicy,
    *,
    attempt: int,
    elapsed: float,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    failure: Failure | None = None,
    now: float,
    random_fraction: float,
) -> RetryDecision:
    """Decide about the attempt that just failed, with either an error ``status`` or a ``failure``.

    :param attempt: the attempt that failed, counting from 1.
    :param elapsed: seconds since the first attempt started.
    :param now: the current Unix time, for ``Retry-After`` dates.
    :param random_fraction: a number in [0, 1) for the jitter.
    """
    if failure is Failure.MAYBE_BILLED and not policy.retry_maybe_billed:
        return RetryDecision(False, reason="the request may have been billed and retry_maybe_billed is off")
    if failure is None and not is_retryable_status(status or 0, headers):
        return RetryDecision(False, reason=f"status {status} is not retried")
    if attempt >= policy.max_attempts:
        return RetryDecision(False, reason=f"gave up after {attempt} of max_attempts={policy.max_attempts}")
    wait = retry_after_seconds(headers, now)
    if wait is not None and wait > policy.retry_after_cap:
        return RetryDecision(
            False,
            wait,
            f"the server asked to wait {wait:.0f} s, "
            f"more than retry_after_cap={policy.retry_after_cap:.0f} s",
        )
    if wait is None:
        wait = backoff_seconds(attempt, policy, random_fraction)
    if elapsed + wait > policy.deadline:
        return RetryDecision(
            False, wait, f"a retry in {wait:.1f} s would pass deadline={policy.deadline:.0f} s"
        )
    return RetryDecision(True, wait, failure.value if failure else f"status {status}")


@dataclass(frozen=True)
class Timing:
    """Where a retry loop gets its time from; tests pass a recorder and a fake clock, never patch globals.

    :param sleep: waits between attempts.
    :param clock: a monotonic clock, for the deadline.
    :param wall_clock: Unix time, for ``Retry-After`` dates.
    :param random_fraction: a number in [0, 1) for the jitter.
    """

    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    random_fraction: Callable[[], float] = random.random


@dataclass
class RetryLoop:
    """The state of one retry loop: which attempt this is, and what :func:`decide` says after a failure.

    >>> loop = RetryLoop(policy, timing)
    >>> while True:
    ...     loop.begin_attempt()
    ...     try: return do_it()
    ...     except SomeError: decision = loop.after_failure(status=503)
    ...     if not decision.retry: raise ...
    ...     loop.wait(decision)
    """

    policy: RetryPolicy
    timing: Timing = field(default_factory=Timing)
    attempt: int = 0
    started: float | None = None

    def begin_attempt(self) -> int:
        if self.started is None:
            self.started = self.timing.clock()
        self.attempt += 1
        return self.attempt

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.timing.clock() - self.started

    def after_failure(
        self,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        failure: Failure | None = None,
    ) -> RetryDecision:
        return decide(
            self.policy,
            attempt=self.attempt,
            elapsed=self.elapsed,
            status=status,
            headers=headers,
            failure=failure,
            now=self.timing.wall_clock(),
            random_fraction=self.timing.random_fraction(),
        )

    def wait(self, decision: RetryDecision) -> None:
        self.timing.sleep(decision.wait)
