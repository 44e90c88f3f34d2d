"""The decisions about money, by table: how a call ended, and whether another may be sent."""

from __future__ import annotations

import json

import pytest

from airflow_bettertoken.exceptions import BetterTokenConfigError
from airflow_bettertoken.protocol.retry import Failure
from airflow_bettertoken.protocol.spend import (
    Call,
    Claim,
    EditEntry,
    Holder,
    Outcome,
    OutputLedger,
    Refusal,
    RunBreaker,
    RunSpend,
    SpendPolicy,
    Stored,
    Verdict,
    check_max_billed_calls,
    likely_cause,
    may_send,
    outcome_of_failure,
    outcome_of_status,
    run_spend,
)

ME = Holder("dag", "run-1", "edit", 3, 1, "worker-1")
OTHER = Holder("other_dag", "run-9", "edit", -1, 2, "worker-2")
NOW = 1_000_000.0
EDIT = "e" * 64


def call(number: int, outcome: Outcome, elapsed: float | None = 60.0, by: Holder = ME, **more) -> Call:
    return Call(
        number=number, by=by, token="t", sent_at=NOW - 100, outcome=outcome, elapsed_s=elapsed, **more
    )


def ledger(*calls: Call, claim: Claim | None = None, **entry) -> OutputLedger:
    return OutputLedger("s3://out/a.png", claim, (EditEntry(EDIT, tuple(calls), **entry),))


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.PAID),
        (502, Outcome.MAYBE_BILLED),
        (504, Outcome.MAYBE_BILLED),
        (524, Outcome.MAYBE_BILLED),
        (500, Outcome.NOT_BILLED),
        (503, Outcome.NOT_BILLED),
        (429, Outcome.NOT_BILLED),
        (400, Outcome.NOT_BILLED),
        (401, Outcome.NOT_BILLED),
    ],
    ids=lambda value: str(getattr(value, "value", value)),
)
def test_how_an_answered_call_ended(status, outcome):
    assert outcome_of_status(status) is outcome


def test_how_an_unanswered_call_ended():
    assert outcome_of_failure(Failure.NOT_SENT) is Outcome.NOT_BILLED
    assert outcome_of_failure(Failure.MAYBE_BILLED) is Outcome.MAYBE_BILLED


LIVE_OTHER = Claim("other-token", OTHER, NOW + 30)
LAPSED_OTHER = Claim("other-token", OTHER, NOW - 1)
MINE = Claim("my-token", ME, NOW + 30)


@pytest.mark.parametrize(
    ("record", "budget", "verdict"),
    [
        (None, 2, Verdict.SEND),
        (ledger(), 2, Verdict.SEND),
        (ledger(claim=LIVE_OTHER), 2, Verdict.WAIT),
        (ledger(claim=LAPSED_OTHER), 2, Verdict.SEND),
        (ledger(call(1, Outcome.MAYBE_BILLED), claim=MINE), 2, Verdict.SEND),
        (ledger(call(1, Outcome.MAYBE_BILLED), call(2, Outcome.MAYBE_BILLED)), 2, Verdict.REFUSE),
        (
            ledger(call(1, Outcome.PAID), call(2, Outcome.NOT_BILLED), call(3, Outcome.NOT_BILLED)),
            2,
            Verdict.SEND,
        ),
        (ledger(call(1, Outcome.OPEN), call(2, Outcome.PAID)), 2, Verdict.REFUSE),
        (ledger(call(1, Outcome.MAYBE_BILLED), call(2, Outcome.MAYBE_BILLED)), 3, Verdict.SEND),
        # A live claim of another task is waited for, even when the budget is spent: it may succeed.
        (ledger(call(1, Outcome.MAYBE_BILLED), call(2, Outcome.OPEN), claim=LIVE_OTHER), 2, Verdict.WAIT),
    ],
    ids=[
        "nothing-recorded",
        "empty-ledger",
        "another-task-holds-it",
        "its-claim-lapsed",
        "my-claim-one-billed",
        "two-maybe-billed",
        "one-paid-two-not-billed",
        "one-open-one-paid",
        "raised-budget",
        "spent-but-held-by-another",
    ],
)
def test_may_send(record, budget, verdict):
    decision = may_send(record, EDIT, token="my-token", policy=SpendPolicy(max_billed_calls=budget), now=NOW)
    assert decision.verdict is verdict
    if verdict is Verdict.WAIT:
        assert decision.claim == LIVE_OTHER and OTHER.label in decision.reason


def test_a_refusal_lists_the_calls_says_why_and_how_to_raise_the_budget():
    record = ledger(
        call(1, Outcome.MAYBE_BILLED, 60.2, cause="HTTP 504", request_id="req_1"),
        call(2, Outcome.MAYBE_BILLED, 59.8, cause="maybe billed: ConnectionError"),
    )
    decision = may_send(
        record, EDIT, token="t", policy=SpendPolicy(), now=NOW, how_to_raise="Raise max_billed_calls (now 2)"
    )
    assert decision.verdict is Verdict.REFUSE
    # The likely cause first, as the user acts on it; then the budget, and every call.
    assert decision.reason.startswith(
        "not sent: each of 2 calls was cut after about 60 s: a proxy or load balancer between this "
        "worker and BetterToken closes requests sooner than an edit takes; raise its timeout. This image "
        "has had 2 calls that may have been billed, and max_billed_calls is 2"
    )
    assert (
        "call 1: maybe billed after 60 s, HTTP 504, request id req_1, by dag/run-1/edit[3] try 1"
        in decision.reason
    )
    assert decision.reason.endswith("Raise max_billed_calls (now 2)")


@pytest.mark.parametrize(
    ("calls", "read_timeout", "cause"),
    [
        (
            [call(1, Outcome.MAYBE_BILLED, 60.2), call(2, Outcome.MAYBE_BILLED, 60.9)],
            900,
            "cut after about 61 s",
        ),
        (
            [call(1, Outcome.MAYBE_BILLED, 100.0), call(2, Outcome.MAYBE_BILLED, 112.0)],
            900,
            "cut after about 106 s",
        ),
        (
            [call(1, Outcome.MAYBE_BILLED, 900.1), call(2, Outcome.MAYBE_BILLED, 900.3)],
            900,
            "at the read timeout",
        ),
        ([call(1, Outcome.PAID, 80.0), call(2, Outcome.PAID, 95.0)], 900, "paid but unusable"),
        ([call(1, Outcome.MAYBE_BILLED, 30.0), call(2, Outcome.MAYBE_BILLED, 90.0)], 900, None),
        ([call(1, Outcome.MAYBE_BILLED, 60.0), call(2, Outcome.PAID, 60.0)], 900, None),
        ([call(1, Outcome.MAYBE_BILLED, 60.0)], 900, None),
        ([], 900, None),
    ],
    ids=[
        "same-cut",
        "same-cut-within-15-percent",
        "read-timeout",
        "all-paid",
        "cuts-far-apart",
        "mixed",
        "one",
        "none",
    ],
)
def test_the_likely_cause(calls, read_timeout, cause):
    found = likely_cause(calls, read_timeout)
    assert (found is None) if cause is None else (cause in found)


def test_taking_the_claim_counts_a_dead_holders_open_call_as_maybe_billed():
    open_call = Call(1, OTHER, "other-token", NOW - 200)
    record = OutputLedger("s3://out/a.png", LAPSED_OTHER, (EditEntry(EDIT, (open_call,)),))
    taken = record.take_claim(MINE, "its sender stopped renewing")
    assert taken.claim == MINE
    [call] = taken.entry(EDIT).calls
    assert (call.outcome, call.cause) == (Outcome.MAYBE_BILLED, "its sender stopped renewing")
    assert taken.entry(EDIT).billed_calls == 1


def test_calls_are_numbered_across_tries_and_ended_by_number():
    record, first = OutputLedger("s3://out/a.png").open_call(EDIT, ME, "t1", NOW)
    record, second = record.open_call(EDIT, OTHER, "t2", NOW + 1)
    record = record.end_call(EDIT, first, outcome=Outcome.PAID, elapsed_s=3.0)
    assert (first, second) == (1, 2)
    assert [a.outcome for a in record.entry(EDIT).calls] == [Outcome.PAID, Outcome.OPEN]


def test_the_ledger_round_trips_through_json():
    record = ledger(
        call(1, Outcome.MAYBE_BILLED, status=504, request_id="r1", cause="HTTP 504"),
        call(2, Outcome.PAID, evidence_uri="s3://out/_bettertoken/evidence/a.png/x-call-2.bin"),
        claim=MINE,
        image_call=2,
        stored=Stored("ab" * 32, NOW, ME),
        refusals=(Refusal(OTHER, NOW, "budget"),),
    )
    assert OutputLedger.load(json.loads(json.dumps(record.dump())), "a ledger") == record


def test_the_run_breaker_trips_after_three_cut_edits_in_a_row():
    breaker = RunBreaker("dag", "run-1")
    breaker = breaker.after_edit(
        cut=True, output_uri="s3://o/1.png", diagnosis="cut after about 60 s", now=NOW
    )
    breaker = breaker.after_edit(cut=True, output_uri="s3://o/2.png", diagnosis=None, now=NOW)
    assert not breaker.tripped
    breaker = breaker.after_edit(cut=True, output_uri="s3://o/3.png", diagnosis=None, now=NOW)
    assert breaker.tripped
    assert "3 edits of this run in a row" in breaker.stop_reason()
    assert "First, s3://o/1.png: cut after about 60 s" in breaker.stop_reason()
    # Once tripped it stays so: the run is stopped, whatever comes after.
    assert breaker.after_edit(cut=False, output_uri="s3://o/4.png", diagnosis=None, now=NOW).tripped
    assert RunBreaker.load(json.loads(json.dumps(breaker.dump())), "a breaker") == breaker


def test_a_success_between_cuts_resets_the_breaker():
    breaker = RunBreaker("dag", "run-1")
    for cut in (True, True, False, True, True):
        breaker = breaker.after_edit(cut=cut, output_uri="s3://o/x.png", diagnosis="d", now=NOW)
    assert (breaker.streak, breaker.tripped) == (2, False)


def test_a_runs_spend_is_its_own_share_of_each_ledger():
    not_sent = call(1, Outcome.NOT_BILLED, sent=False)
    cut = call(2, Outcome.MAYBE_BILLED)
    paid = call(3, Outcome.PAID)
    elsewhere = call(4, Outcome.PAID, by=OTHER)
    stored = ledger(not_sent, cut, paid, elsewhere, image_call=3, stored=Stored("s", NOW, ME))
    lost = OutputLedger(
        "s3://out/b.png",
        edits=(EditEntry("f" * 64, (call(1, Outcome.OPEN),), refusals=(Refusal(ME, NOW, "budget"),)),),
    )
    stopped = OutputLedger(
        "s3://out/c.png", edits=(EditEntry("g" * 64, refusals=(Refusal(ME, NOW, "run"),)),)
    )

    spend = run_spend([stored, lost, stopped], "dag", "run-1")

    assert spend == RunSpend(
        posts=3,
        paid=1,
        maybe_billed=2,
        images_stored=1,
        billed_without_image=2,
        stopped_by_budget=1,
        stopped_by_run=1,
        calls_unpriced=3,  # no price table: the billed calls (cut, paid, open) have no cost
    )
    assert run_spend([stored], "other_dag", "run-9") == RunSpend(
        posts=1, paid=1, billed_without_image=1, calls_unpriced=1
    )
    assert spend - spend == RunSpend() and spend + RunSpend() == spend


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True, None], ids=repr)
def test_the_budget_is_a_whole_number_of_at_least_one(value):
    with pytest.raises(BetterTokenConfigError, match="max_billed_calls must be a whole number of at least 1"):
        check_max_billed_calls(value, "connection 'x' extra")
