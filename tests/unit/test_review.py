"""The review record's moves (open, decide, close, publish), its format, the CSRF token and the form,
by table."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_bettertoken.exceptions import BetterTokenInputError, BetterTokenRecordError
from airflow_bettertoken.plugins._review import (
    MAX_BODY_BYTES,
    FormError,
    FormTooLarge,
    check_origin,
    csrf_token,
    parse_form,
    read_form,
    valid_csrf_token,
)
from airflow_bettertoken.protocol.review import (
    Action,
    Decision,
    ItemState,
    ReviewItem,
    ReviewRecord,
    RoundClose,
)
from airflow_bettertoken.storage.review import staging_prefix
from airflow_bettertoken.storage.run_manifest import (
    ReviewTotals,
    RunCounts,
    RunManifest,
    fold_into_summary,
    review_manifest,
)

STAGE = "_bettertoken/staging/d/r/round-1/"
ROUND_2 = "_bettertoken/staging/d/r/round-2/"
AT = "2026-12-01T10:00:00+00:00"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "records"


def staged(name: str) -> ReviewItem:
    return ReviewItem(
        key=STAGE + name, name=name, round=0, state=ItemState.PENDING, sources=(f"s3://in/{name}",)
    )


def record(*names: str) -> ReviewRecord:
    empty = ReviewRecord(
        dag_id="d",
        run_id="r",
        bucket="out",
        staging_prefix=f"s3://out/{STAGE}",
        publish_prefix="s3://out/pub/",
    )
    return empty.open(1, [staged(name) for name in names], AT)


def decide(rec: ReviewRecord, **actions: str) -> ReviewRecord:
    decisions = {
        STAGE + name: Decision.checked(action, "alice", AT, prompt="brighter" if action == "reedit" else None)
        for name, action in actions.items()
    }
    new, refused = rec.decide(decisions)
    assert refused == {}
    return new


def close(rec: ReviewRecord, round_number: int = 1, undecided: str = "reject", by: str | None = "bob"):
    ended = RoundClose(
        round=round_number, by=by, at=AT, chosen="Apply", timed_out=by is None, undecided=undecided
    )
    return rec.close(round_number, ended, f"_bettertoken/staging/d/r/round-{round_number + 1}/")


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

    states = {key: item.state.value for key, item in closed.items.items()}
    assert {name: states[STAGE + name] for name in ("a.png", "b.png", "d.png")} == expected
    assert states[STAGE + "c.png"] == "reedited" and states[ROUND_2 + "c.png"] == "pending"
    again = closed.items[ROUND_2 + "c.png"]
    assert (again.prompt, again.reedit_of, again.sources, again.round, again.name) == (
        "brighter",
        STAGE + "c.png",
        ("s3://in/c.png",),
        2,
        "c.png",
    )
    assert closed.items[STAGE + "c.png"].next_key == ROUND_2 + "c.png"
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
    _, refused = closed.decide({STAGE + "a.png": reedit, ROUND_2 + "c.png": reedit, "nope": reedit})
    assert refused == {
        STAGE + "a.png": "it is approved",
        ROUND_2 + "c.png": "round 2 is the last (2): approve or reject it",
        "nope": "it is not waiting for review",
    }


def test_a_round_closed_twice_or_opened_twice_keeps_what_was_decided():
    rec = decide(record("a.png"), **{"a.png": "approve"})
    assert rec.open(1, [staged("a.png")], AT).items == rec.items
    closed = close(rec)
    assert close(closed, by="carol") == closed


def test_a_re_edit_that_left_no_image_is_rejected_when_its_round_opens():
    closed = close(decide(record("c.png"), **{"c.png": "reedit"}))
    opened = closed.open(2, [], AT)
    item = opened.items[ROUND_2 + "c.png"]
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


def test_images_named_like_re_edits_keep_their_names_and_a_re_edit_takes_its_originals():
    rec = decide(
        record("lamp.png", "lamp.r2.png", "x.r10.png", "x.png.png", "shelf/lamp.png"),
        **{"lamp.png": "reedit", "lamp.r2.png": "approve", "x.r10.png": "approve", "x.png.png": "approve"},
    )
    closed = close(rec)
    names = {key: item.name for key, item in closed.items.items()}
    assert names == {
        STAGE + "lamp.png": "lamp.png",
        STAGE + "lamp.r2.png": "lamp.r2.png",
        STAGE + "x.r10.png": "x.r10.png",
        STAGE + "x.png.png": "x.png.png",
        STAGE + "shelf/lamp.png": "shelf/lamp.png",
        ROUND_2 + "lamp.png": "lamp.png",  # the re-edit: in its round's prefix, under its original's name
    }
    # Its original and the image named lamp.r2.png are two items, each with its own history.
    assert closed.items[STAGE + "lamp.r2.png"].state is ItemState.APPROVED
    assert closed.items[ROUND_2 + "lamp.png"].state is ItemState.PENDING


def test_each_rounds_staging_prefix_is_its_own_and_no_other_rounds_is_under_it():
    prefixes = [staging_prefix("out", "d", "manual__2026-12-01T09:00:00+00:00", n) for n in (1, 2, 3)]
    assert prefixes[0] == "s3://out/_bettertoken/staging/d/manual__2026-12-01T09_00_00_00_00/round-1/"
    assert prefixes[1].endswith("/round-2/") and prefixes[2].endswith("/round-3/")
    assert not any(a != b and b.startswith(a) for a in prefixes for b in prefixes)
    with pytest.raises(ValueError, match="must be 1 or more"):
        staging_prefix("out", "d", "r", 0)


@pytest.mark.parametrize("name", ["", "/abs.png", "a//b.png", "../up.png", "a/./b.png", "dir/"])
def test_a_name_that_would_leave_the_publish_prefix_is_refused(name):
    with pytest.raises(ValueError, match="cannot be published"):
        ReviewItem(key="k", name=name, round=1, state=ItemState.PENDING)


def test_the_record_dumps_and_loads_as_itself():
    rec = close(decide(record("a.png", "b.png"), **{"a.png": "approve", "b.png": "reedit"}))
    document = json.loads(json.dumps(rec.dump()))
    assert document["format"] == 2 and "key" not in document["items"][STAGE + "a.png"]
    assert list(document["items"]) == sorted(document["items"])
    assert ReviewRecord.load(document, "s3://out/rec.json") == rec


def test_a_record_written_by_format_1_loads_with_its_rounds_and_names():
    """tests/fixtures/records/review-record-v1.json was written by the code of format 1: round 1
    closed (published, re-edited, rejected), round 2 open with the re-edit approved."""
    document = json.loads((FIXTURES / "review-record-v1.json").read_text())
    rec = ReviewRecord.load(document, "s3://shop-out/v1.json")
    root = "_bettertoken/staging/bettertoken_reviewed_backfill/manual__2026-12-01T09:00:00+00:00/"
    summary = {key.removeprefix(root): (i.round, i.state.value, i.name) for key, i in rec.items.items()}
    # Rounds mean what they meant: format 1 recorded each image's round and its original. The name to
    # publish under comes from the staging prefix and reedit_of, never from the file name: lamp.r2.png
    # is round 2's re-edit of lamp.png, published as lamp.png; x.png.png keeps its name.
    assert summary == {
        "cup.png": (1, "published", "cup.png"),
        "lamp.png": (1, "reedited", "lamp.png"),
        "lamp.r2.png": (2, "pending", "lamp.png"),
        "shoes/boot.png": (1, "published", "shoes/boot.png"),
        "x.png.png": (1, "rejected", "x.png.png"),
    }
    assert rec.open_round == 2 and [r.round for r in rec.rounds] == [1]
    assert rec.items[root + "lamp.r2.png"].latest.action is Action.APPROVE
    assert rec.items[root + "lamp.png"].next_key == root + "lamp.r2.png"
    assert rec.write_args == {"ServerSideEncryption": "AES256"}
    # Round 2 closes on the new code: the re-edit is approved, under its original's name.
    done = close(rec, round_number=2)
    assert [(i.key.removeprefix(root), i.name) for i in done.approved()] == [("lamp.r2.png", "lamp.png")]
    assert ReviewRecord.load(done.dump(), "again").dump() == done.dump()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"format": 3}, "has format 3, written by a newer airflow-bettertoken", id="newer"),
        pytest.param({"format": None}, "format: Input should be 2", id="no-format"),
        pytest.param({"max_rounds": "two"}, "max_rounds: Input should be a valid integer", id="type"),
        pytest.param({"colour": "red"}, "colour: Extra inputs are not permitted", id="unknown-field"),
        pytest.param({"items": {"k": {"round": 1}}}, "items.k.name: Field required", id="item"),
    ],
)
def test_a_record_that_does_not_load_names_the_object_and_what_is_wrong(change, message):
    document = {**record("a.png").dump(), **change}
    with pytest.raises(BetterTokenRecordError, match=r"s3://out/_bettertoken/reviews/d/r\.json") as found:
        ReviewRecord.load(document, "s3://out/_bettertoken/reviews/d/r.json")
    assert message in str(found.value)


def test_a_format_1_re_edit_whose_original_is_missing_is_an_error_naming_it():
    document = json.loads((FIXTURES / "review-record-v1.json").read_text())
    root = "_bettertoken/staging/bettertoken_reviewed_backfill/manual__2026-12-01T09:00:00+00:00/"
    del document["items"][root + "lamp.png"]
    with pytest.raises(BetterTokenRecordError, match="names an original that is not in the record"):
        ReviewRecord.load(document, "s3://shop-out/v1.json")


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
        b"decision.edit_image.0=approve&decision.edit_image.1=&decision.edit_image.2=reedit"
        b"&prompt.edit_image.2=more+light&size.edit_image.2=1024x1024&decision.reedit.x.3=reject"
    )
    rows = parse_form(body)
    assert [(r.task_id, r.map_index, r.action, r.prompt, r.size) for r in rows] == [
        ("edit_image", 0, "approve", None, None),
        ("edit_image", 2, "reedit", "more light", "1024x1024"),
        ("reedit.x", 3, "reject", None, None),
    ]
    with pytest.raises(FormError, match="does not name a task instance"):
        parse_form(b"decision.edit_image.x=approve")


def test_an_oversized_body_is_refused_by_its_length_before_a_byte_is_read_and_never_read_past_it():
    read = []

    async def chunks(*parts: bytes):
        for part in parts:
            read.append(part)
            yield part

    def body(length: str | None, *parts: bytes) -> bytes:
        return asyncio.run(read_form(length, chunks(*parts)))

    with pytest.raises(FormTooLarge, match="over"):
        body(str(MAX_BODY_BYTES + 1), b"x")
    with pytest.raises(FormTooLarge, match="Content-Length"):
        body(None, b"x")
    assert read == []  # refused by the declared length: nothing was read
    big = b"x" * (MAX_BODY_BYTES // 2 + 1)
    with pytest.raises(FormTooLarge, match="over"):
        body("10", big, big, big)  # a body longer than it said is cut off once over the limit
    assert len(read) == 2
    assert body("3", b"a=b") == b"a=b"


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
    # A staging prefix that holds the re-edits' (the run's whole staging folder) is refused, naming the fix.
    whole_run = BetterTokenReviewOperator(**{**gate, "staging_prefix": "s3://o/_bettertoken/staging/d/r/"})
    with pytest.raises(BetterTokenInputError, match=r"where re-edits are staged: use .*staging_prefix"):
        whole_run._prefixes(SimpleNamespace(dag_id="d", run_id="r"))
    ours = {**gate, "staging_prefix": staging_prefix("o", "d", "r")}
    assert BetterTokenReviewOperator(**ours)._prefixes(SimpleNamespace(dag_id="d", run_id="r"))
