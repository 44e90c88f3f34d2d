"""The results table's rows: how a plan row, this run's edits and the previous latest row make one row."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal

import pytest

from airflow_bettertoken.exceptions import BetterTokenRecordError
from airflow_bettertoken.protocol.result import EditFailure, EditXCom
from airflow_bettertoken.protocol.spend import Call, EditEntry, Holder, Outcome, OutputLedger, Refusal
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.results_table import (
    COLUMNS,
    NO_RECORD,
    ResultRow,
    RunOutcomes,
    merge_row,
    results_locations,
)
from airflow_bettertoken.storage.table_plan import PlanRow, table_plan_location

OUT = "s3://out/rows/sku-1.png"


def plan(state: str, dest: str | None = OUT, reason: str | None = None) -> PlanRow:
    return PlanRow("sku-1", 2, state, dest, "a red mug", "1024x1024", ("s3://in/sku-1.jpg",), reason)


def xcom(skipped: bool = False, **more) -> dict:
    return {
        **EditXCom(
            output_uri=OUT,
            width=1024,
            height=1024,
            requested_size="1024x1024",
            nbytes=10,
            sha256="ab" * 32,
            model="gpt-image-2",
            source_uris=["s3://in/sku-1.jpg"],
            skipped=skipped,
            billed_calls=0 if skipped else 1,
        ).dump(),
        **more,
    }


def failure(error: str, for_good: bool) -> dict:
    return EditFailure(reason="it went wrong", error=error, for_good=for_good, dest=OUT).dump()


DONE_BEFORE = ResultRow(
    "sku-1", "done", OUT, 1024, 1024, True, "cd" * 32, 2, "0.04", "USD", "an old prompt", None
)
FAILED_BEFORE = ResultRow(
    "sku-1", "blocked by budget", OUT, billed_calls=3, error="BetterTokenBudgetError: cap"
)


@pytest.mark.parametrize(
    ("plan_row", "results", "failures", "previous", "expected"),
    [
        pytest.param(
            plan("planned"), [xcom(cost="9.99", currency="EUR")], [], None,
            dict(state="done", width=1024, sha256="ab" * 32, billed_calls=2, cost="0.042", currency="USD",
                 size_matches=True, error=None),
            id="planned-and-made",
        ),
        pytest.param(
            plan("planned"), [xcom(skipped=True)], [], DONE_BEFORE,
            dict(state="skipped", sha256="ab" * 32),
            id="planned-but-the-edit-found-the-output",
        ),
        pytest.param(
            plan("planned"), [], [failure("BetterTokenRateLimitError", False)], None,
            dict(state="failed", error="BetterTokenRateLimitError: it went wrong", billed_calls=2,
                 cost="0.042"),
            id="planned-and-failed",
        ),
        pytest.param(
            plan("planned"), [], [failure("BetterTokenResponseError", True)], None,
            dict(state="failed for good", error="BetterTokenResponseError: it went wrong"),
            id="planned-and-failed-for-good",
        ),
        pytest.param(
            plan("planned"), [], [failure("BetterTokenBudgetError", True)], None,
            dict(state="blocked by budget", error="BetterTokenBudgetError: it went wrong"),
            id="planned-and-blocked-by-budget",
        ),
        pytest.param(
            plan("planned"), [None], [None], None, dict(state="failed", error=NO_RECORD),
            id="planned-and-no-record",
        ),
        pytest.param(
            plan("done"), [], [], DONE_BEFORE, dataclasses.asdict(DONE_BEFORE), id="done-carries-the-earlier"
        ),
        pytest.param(
            plan("done"), [], [], dataclasses.replace(DONE_BEFORE, output_uri="s3://out/other.png"),
            dict(state="skipped", output_uri=OUT, sha256=None, cost=None, prompt="a red mug"),
            id="done-another-output-before-is-not-carried",
        ),
        pytest.param(
            plan("done"), [], [], FAILED_BEFORE, dict(state="skipped", error=None, billed_calls=None),
            id="done-after-a-failure-is-skipped",
        ),
        pytest.param(
            plan("failed for good", reason="BetterTokenInputError: no such source"), [], [], None,
            dict(state="failed for good", error="BetterTokenInputError: no such source"),
            id="failed-for-good-earlier",
        ),
        pytest.param(
            plan("failed for good"), [], [], FAILED_BEFORE, dataclasses.asdict(FAILED_BEFORE),
            id="failed-for-good-keeps-blocked-by-budget",
        ),
        pytest.param(
            plan("bad", dest=None, reason="source 'x' is not an s3:// URI"), [], [], DONE_BEFORE,
            dict(state="bad", output_uri=None, error="source 'x' is not an s3:// URI", sha256=None),
            id="bad",
        ),
        pytest.param(
            plan("later"), [], [], FAILED_BEFORE, dict(state="later", output_uri=OUT, error=None, cost=None),
            id="later",
        ),
    ],
)  # fmt: skip
def test_each_row_state(plan_row, results, failures, previous, expected):
    run = RunOutcomes.from_xcom(results, failures, "edit_row")
    # What the spend ledger says of OUT (add_spend): what the XCom says of money is never read.
    run.billed_calls, run.costs, run.currency = {OUT: 2}, {OUT: Decimal("0.042")}, "USD"
    row = merge_row(plan_row, run, previous)
    assert {name: getattr(row, name) for name in expected} == expected
    assert row.key == "sku-1"


def test_a_plan_row_of_an_unknown_state_is_an_error_naming_it():
    with pytest.raises(BetterTokenRecordError, match=r"plan row 'sku-1' \(line 2\) has the state 'paused'"):
        merge_row(plan("paused"), RunOutcomes(), None)


def test_a_row_line_has_exactly_the_columns_and_reads_back():
    line = json.loads(json.dumps(DONE_BEFORE.line()))
    assert tuple(line) == COLUMNS == (
        "key", "state", "output_uri", "width", "height", "size_matches", "sha256",
        "billed_calls", "cost", "currency", "prompt", "error",
    )  # fmt: skip
    assert ResultRow.load(line, "a line") == DONE_BEFORE


def call(number: int, by: Holder, outcome: Outcome, cost: str | None = None) -> Call:
    priced = {"cost": Decimal(cost), "currency": "USD"} if cost else {}
    return Call(number=number, by=by, token="t", sent_at=1.0, outcome=outcome, **priced)


def test_the_spend_counts_the_edits_this_run_sent_or_refused_from_their_ledgers():
    me = Holder("dag", "run-1", "edit_row", 0, 1, "w")
    earlier = Holder("dag", "run-0", "edit_row", 0, 1, "w")
    sent = OutputLedger(
        OUT,
        edits=(
            EditEntry(
                "e1",
                calls=(
                    call(1, earlier, Outcome.PAID, "0.04"),
                    call(2, me, Outcome.MAYBE_BILLED, "0.05"),
                    call(3, me, Outcome.PAID, "0.04"),
                ),
            ),
        ),
    )
    refused = OutputLedger(
        "s3://out/rows/sku-2.png",
        edits=(
            EditEntry("e2", calls=(call(1, earlier, Outcome.PAID),), refusals=(Refusal(me, 2.0, "budget"),)),
        ),
    )
    untouched = OutputLedger(
        "s3://out/rows/sku-3.png", edits=(EditEntry("e3", calls=(call(1, earlier, Outcome.PAID),)),)
    )
    run = RunOutcomes()
    run.add_spend([sent, refused, untouched], "dag", "run-1")
    assert run.billed_calls == {OUT: 3, "s3://out/rows/sku-2.png": 1}
    # This run's calls only: the earlier run paid for its own.
    assert run.costs == {OUT: Decimal("0.09")} and run.currency == "USD"
    assert run.cost_of(OUT) == ("0.09", "USD") and run.cost_of("s3://out/rows/sku-2.png") == (None, None)


def test_without_a_price_table_a_row_has_no_cost():
    me = Holder("dag", "run-1", "edit_row", 0, 1, "w")
    run = RunOutcomes()
    run.add_spend(
        [OutputLedger(OUT, edits=(EditEntry("e1", calls=(call(1, me, Outcome.PAID),)),))], "dag", "run-1"
    )
    assert run.billed_calls == {OUT: 1} and run.cost_of(OUT) == (None, None)


def test_where_the_tables_and_the_plan_go():
    run, latest = results_locations(
        S3Location("out", "rows/_results/"), "manual__2026-12-05T14:00:00+00:00", ".jsonl"
    )
    assert run.uri == "s3://out/rows/_results/runs/manual__2026-12-05T14_00_00_00_00.jsonl"
    assert latest.uri == "s3://out/rows/_results/latest.jsonl"
    assert (
        table_plan_location("out", "dag", "manual__1").uri
        == "s3://out/_bettertoken/tables/dag/manual__1/plan.jsonl"
    )
