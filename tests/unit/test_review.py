"""The review record's moves (open, decide, close, publish), the CSRF token and the form, by table."""

from __future__ import annotations

import dataclasses

import pytest

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.plugins._review import (
    FormError,
    check_origin,
    csrf_token,
    parse_form,
    valid_csrf_token,
)
from airflow_bettertoken.protocol.review import (
    Action,
    Decision,
    ItemState,
    ReviewItem,
    ReviewRecord,
    RoundClose,
    reedit_key,
)
from airflow_bettertoken.storage.run_manifest import (
    ReviewTotals,
    RunCounts,
    RunManifest,
    fold_into_summary,
    review_manifest,
)

STAGE = "_bettertoken/staging/d/r/"
AT = "2026-12-01T10:00:00+00:00"


def record(*names: str) -> ReviewRecord:
    empty = ReviewRecord("d", "r", "out", f"s3://out/{STAGE}", "s3://out/pub/")
    staged = [ReviewItem(STAGE + name, 0, ItemState.PENDING, sources=(f"s3://in/{name}",)) for name in names]
    return empty.open(1, staged, AT)


def decide(rec: ReviewRecord, **actions: str) -> ReviewRecord:
    decisions = {
        STAGE + name: Decision.checked(action, "alice", AT, prompt="brighter" if action == "reedit" else None)
        for name, action in actions.items()
    }
    new, refused = rec.decide(decisions)
    assert refused == {}
    return new


def close(rec: ReviewRecord, round_number: int = 1, undecided: str = "reject", by: str | None = "bob"):
    return rec.close(round_number, RoundClose(round_number, by, AT, "Apply", by is None, undecided))


@pytest.mark.parametrize(
    ("undecided", "expected"),
    [
        pytest.param("reject", {"a.png": "published", "b.png": "rejected", "d.png": "rejected"}, id="reject"),
        pytest.param(
            "approve", {"a.png": "published", "b.png": "rejected", "d.png": "published"}, id="approve"
        ),
    ],
)
def test_a_round_closes_with_each_latest_decision_and_the_default_for_the_undecided(undecided, expected):
    rec = decide(record("a.png", "b.png", "c.png", "d.png"), **{"a.png": "approve", "b.png": "reject"})
    rec = decide(rec, **{"c.png": "reject"})
    rec = decide(rec, **{"c.png": "reedit"})  # a later decision replaces an earlier one
    closed = close(rec, undecided=undecided)
    closed = closed.published({key: "s3://out/pub/x" for key in (i.key for i in closed.approved())})

    states = {key.removeprefix(STAGE): item.state.value for key, item in closed.items.items()}
    assert {k: v for k, v in states.items() if k != "c.r2.png" and k != "c.png"} == expected
    assert states["c.png"] == "reedited" and states["c.r2.png"] == "pending"
    again = closed.items[STAGE + "c.r2.png"]
    assert (again.prompt, again.reedit_of, again.sources, again.round) == (
        "brighter",
        STAGE + "c.png",
        ("s3://in/c.png",),
        2,
    )
    assert [d.action for d in closed.items[STAGE + "c.png"].history] == [Action.REJECT, Action.REEDIT]
    undecided_by = closed.items[STAGE + "d.png"].history[-1].by
    assert undecided_by == "bob"
    assert closed.rounds[0].counts == {
        "approved": 1 + (undecided == "approve"),
        "rejected": 1 + (undecided == "reject"),
        "reedited": 1,
        "undecided": 1,
    }


def test_two_reviewers_who_decide_from_the_same_record_both_keep_their_decisions():
    base = record("a.png", "b.png")
    first = decide(base, **{"a.png": "approve"})
    # The second reviewer's write lost to the first: the change runs again on the fresher record.
    second = decide(first, **{"b.png": "reject"})
    assert [second.items[STAGE + n].latest.action for n in ("a.png", "b.png")] == [
        Action.APPROVE,
        Action.REJECT,
    ]


def test_decisions_on_closed_images_and_re_edits_in_the_last_round_are_refused():
    closed = close(decide(record("a.png", "c.png"), **{"a.png": "approve", "c.png": "reedit"}))
    reedit = Decision.checked("reedit", "alice", AT, prompt="again")
    _, refused = closed.decide({STAGE + "a.png": reedit, STAGE + "c.r2.png": reedit, "nope": reedit})
    assert refused == {
        STAGE + "a.png": "it is approved",
        STAGE + "c.r2.png": "round 2 is the last (2): approve or reject it",
        "nope": "it is not waiting for review",
    }


def test_a_round_closed_twice_or_opened_twice_keeps_what_was_decided():
    rec = decide(record("a.png"), **{"a.png": "approve"})
    assert rec.open(1, [ReviewItem(STAGE + "a.png", 0, ItemState.PENDING)], AT).items == rec.items
    closed = close(rec)
    assert close(closed, by="carol") == closed


def test_a_re_edit_that_left_no_image_is_rejected_when_its_round_opens():
    closed = close(decide(record("c.png"), **{"c.png": "reedit"}))
    opened = closed.open(2, [], AT)
    item = opened.items[STAGE + "c.r2.png"]
    assert item.state is ItemState.REJECTED and "left no image" in item.history[-1].by


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"action": "publish"}, "is not one of approve, reject, reedit", id="unknown"),
        pytest.param({"action": "reedit"}, "needs a revised prompt", id="no-prompt"),
        pytest.param({"action": "reedit", "prompt": "x", "size": "999x9"}, "is not one of auto", id="size"),
        pytest.param({"action": "reedit", "prompt": "x" * 32_001}, "at most 32000", id="long"),
    ],
)
def test_a_bad_decision_names_the_field_before_anything_is_written(fields, message):
    with pytest.raises(BetterTokenInputError, match=message):
        Decision.checked(fields.pop("action"), "alice", AT, **fields)


@pytest.mark.parametrize(
    ("key", "round_number", "expected"),
    [("p/x.png", 2, "p/x.r2.png"), ("p/x.r2.png", 3, "p/x.r3.png"), ("p/x.r2.png", 2, "p/x.r2.r2.png")],
)
def test_reedit_keys(key, round_number, expected):
    assert reedit_key(key, round_number) == expected


def test_the_summary_sums_the_reviews_and_a_run_counted_again_is_not_added_twice():
    rec = close(decide(record("a.png", "b.png", "c.png"), **{"a.png": "approve", "c.png": "reedit"}))
    rec = rec.published({STAGE + "a.png": "s3://out/pub/a.png"})
    run = RunManifest(
        dag_id="d",
        run_id="r",
        finished_at="2026-12-05T00:00:00+00:00",
        counts=RunCounts(done=3),
        review=review_manifest(rec),
    )
    assert run.review.counts == {
        "images": 4,
        "approved": 1,
        "published": 1,
        "rejected": 1,
        "reedited": 1,
        "pending": 1,
        "rounds": 1,
    }
    once = fold_into_summary(None, run, None)
    twice = fold_into_summary(once, run, None)
    other = fold_into_summary(twice, dataclasses.replace(run, run_id="s"), None)
    expected = ReviewTotals(approved=1, rejected=1, reedited=1, published=1)
    assert once.review == twice.review == expected
    assert other.review == expected + expected


def test_the_csrf_token_is_bound_to_the_user_the_run_and_time():
    token = csrf_token("alice", "d", "r", now=1000.0)
    assert valid_csrf_token(token, "alice", "d", "r", now=1001.0)
    assert not valid_csrf_token(token, "bob", "d", "r", now=1001.0)
    assert not valid_csrf_token(token, "alice", "d", "other", now=1001.0)
    assert not valid_csrf_token(token, "alice", "d", "r", now=1000.0 + 13 * 3600)
    assert not valid_csrf_token(None, "alice", "d", "r") and not valid_csrf_token("1.x", "alice", "d", "r")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [(None, True), ("http://127.0.0.1:8080", True), ("https://evil.example", False), ("null", False)],
)
def test_the_origin_must_be_the_servers_own(origin, allowed):
    assert check_origin(origin, "http", "127.0.0.1:8080") is allowed


def test_the_form_gives_each_decided_row_and_leaves_the_undecided():
    body = (
        b"csrf_token=t&decision.edit_image.0=approve&decision.edit_image.1=&decision.edit_image.2=reedit"
        b"&prompt.edit_image.2=more+light&size.edit_image.2=1024x1024&decision.reedit.x.3=reject"
    )
    token, rows = parse_form(body)
    assert token == "t"
    assert [(r.task_id, r.map_index, r.action, r.prompt, r.size) for r in rows] == [
        ("edit_image", 0, "approve", None, None),
        ("edit_image", 2, "reedit", "more light", "1024x1024"),
        ("reedit.x", 3, "reject", None, None),
    ]
    with pytest.raises(FormError, match="does not name a task instance"):
        parse_form(b"decision.edit_image.x=approve")


def test_the_gate_is_refused_at_parse_time_on_airflow_3_0_naming_3_1_and_checks_its_inputs():
    from airflow_bettertoken.exceptions import BetterTokenConfigError
    from airflow_bettertoken.operators._hitl import HAS_HITL
    from airflow_bettertoken.operators.review import BetterTokenReviewOperator

    gate = {"task_id": "review", "staging_prefix": "s3://o/s/", "publish_prefix": "s3://o/p/"}
    if not HAS_HITL:
        with pytest.raises(BetterTokenConfigError, match=r"needs Airflow 3\.1 or later"):
            BetterTokenReviewOperator(**gate)
        return
    with pytest.raises(BetterTokenInputError, match="undecided='publish' is not allowed"):
        BetterTokenReviewOperator(**gate, undecided="publish")
    with pytest.raises(BetterTokenInputError, match="review_round=3 must be from 1 to max_rounds=2"):
        BetterTokenReviewOperator(**gate, review_round=3)
    assert BetterTokenReviewOperator(**gate).defaults == ["Apply the decisions"]
