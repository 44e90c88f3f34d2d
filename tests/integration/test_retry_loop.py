"""The hook's retry loop over real HTTP, with an injected sleeper and clock instead of real waits."""

from __future__ import annotations

from email.utils import formatdate

import pytest
from airflow.providers.common.compat.sdk import AirflowTaskTimeout

from airflow_bettertoken.exceptions import BetterTokenRateLimitError, BetterTokenTransportError
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
from airflow_bettertoken.testing.samples import sample_image
from tests.virtual_time import NOW, VirtualTime

PNG = sample_image(100, 80)
ERROR = {"error": {"message": "injected"}}


def hook(
    conn_id: str = "bettertoken_default", sleeper: VirtualTime | None = None, **retry
) -> BetterTokenHook:
    sleeper = sleeper or VirtualTime()
    retry = {"backoff_initial": 3.0, "backoff_max": 15.0, **retry}  # the defaults, not the suite's fast ones
    return BetterTokenHook(conn_id, api_retry=retry, timing=sleeper.timing())


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after": formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({}, 3.0),
    ],
    ids=["seconds", "ms", "http-date", "backoff"],
)
def test_the_wait_the_server_asks_for_is_honoured(emulator, headers, wait):
    sleeper = VirtualTime()
    emulator.queue({"status": 429, "headers": headers, "json": ERROR})
    hook(sleeper=sleeper, jitter=0).edit_image("p", [PNG])
    assert sleeper.waits == [wait]


def test_a_wait_over_the_cap_fails_at_once_and_says_so(emulator):
    sleeper = VirtualTime()
    emulator.queue({"status": 429, "headers": {"retry-after": "3600"}, "json": ERROR})
    with pytest.raises(
        BetterTokenRateLimitError, match="asked to wait 3600 s, more than retry_after_cap=120 s"
    ):
        hook(sleeper=sleeper).edit_image("p", [PNG])
    assert sleeper.waits == []


def test_the_attempt_budget_bounds_the_loop(emulator):
    sleeper = VirtualTime()
    emulator.queue(*[{"status": 503, "json": ERROR}] * 5)
    with pytest.raises(Exception, match="gave up after 3 of max_attempts=3") as info:
        hook(sleeper=sleeper, max_attempts=3, jitter=0).edit_image("p", [PNG])
    assert sleeper.waits == [3.0, 7.5]
    assert info.value.attempts == 3
    assert emulator.stats()["posts"] == 3


def test_the_deadline_bounds_the_loop(emulator):
    sleeper = VirtualTime()
    emulator.queue(*[{"status": 503, "json": ERROR}] * 5)
    with pytest.raises(Exception, match="would pass deadline=10 s"):
        hook(sleeper=sleeper, max_attempts=10, deadline=10, jitter=0).edit_image("p", [PNG])
    assert sleeper.waits == [3.0]  # 3 + 7.5 would pass 10 s


def test_a_reset_after_sending_is_logged_as_maybe_billed(emulator, capfd):
    emulator.queue({"action": "reset"})
    hook().edit_image("p", [PNG])
    assert "maybe billed" in capfd.readouterr().out


def test_maybe_billed_failures_are_not_resent_when_turned_off(emulator):
    emulator.queue({"action": "reset"})
    with pytest.raises(BetterTokenTransportError, match="maybe billed") as info:
        hook(retry_maybe_billed=False).edit_image("p", [PNG])
    assert info.value.maybe_billed is True
    assert emulator.stats()["posts"] == 1


def test_connection_refused_is_known_to_be_unsent(emulator, connection):
    conn_id = connection(host="http://127.0.0.1:9/v1")
    with pytest.raises(BetterTokenTransportError, match="not sent") as info:
        hook(conn_id, max_attempts=2).edit_image("p", [PNG])
    assert info.value.maybe_billed is False
    assert info.value.attempts == 2


@pytest.mark.parametrize(
    "interruption", [KeyboardInterrupt, AirflowTaskTimeout], ids=["ctrl-c", "task-timeout"]
)
def test_interruptions_pass_through_untouched(emulator, interruption):
    def interrupted_sleep(seconds: float) -> None:
        raise interruption()

    emulator.queue({"status": 503, "json": ERROR})
    with pytest.raises(interruption):
        BetterTokenHook(timing=VirtualTime().timing(sleep=interrupted_sleep)).edit_image("p", [PNG])
