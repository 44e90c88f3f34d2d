"""The cap by table (protocol/budget.py), and the chain's reservations (storage/chain.py)."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from airflow_bettertoken.exceptions import BetterTokenInputError, BetterTokenRecordConflictError
from airflow_bettertoken.protocol.budget import (
    Estimate,
    SpendPlan,
    edits_that_fit,
    estimate_per_image,
    is_blocked_by_budget,
    parse_money,
    plan_line,
    spend_plan,
    with_planned_edits,
)
from airflow_bettertoken.protocol.price import PriceTable
from airflow_bettertoken.protocol.result import EditFailure
from airflow_bettertoken.protocol.spend import RunSpend
from airflow_bettertoken.storage.chain import ChainState, RunResult, with_reservation

PER_IMAGE = PriceTable(currency="USD", taken_on="2026-11-01", per_image={"1024x1024": D("0.04")})
PER_TOKEN = PriceTable(
    currency="USD",
    taken_on="2026-11-01",
    per_million_tokens={"text_input": D("5"), "image_input": D("10"), "image_output": D("40")},
)
FIXED = Estimate("USD", "price table of 2026-11-01", D("0.04"), D("0.04"), D("0.04"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("None", None),
        ("25", (D("25"), None)),
        ("25.50", (D("25.50"), None)),
        ("USD 25.50", (D("25.50"), "USD")),
        (3, (D(3), None)),
        (D("1.5"), (D("1.5"), None)),
    ],
)
def test_a_cap_is_read_as_the_user_wrote_it(value, expected):
    assert parse_money(value, "max_spend") == expected


@pytest.mark.parametrize("value", ["-1", "lots", "25 USD", "usd 2", True, 1.5])
def test_a_cap_that_is_no_money_names_its_form(value):
    with pytest.raises(BetterTokenInputError, match=r'max_spend=.* such as "25.00"'):
        parse_money(value, "max_spend")


@pytest.mark.parametrize(
    ("left", "per_image", "n", "fits"),
    [
        (D("1"), D("0.25"), 10, 4),
        (D("1"), D("0.3"), 10, 3),
        (D("1"), D("0.25"), 2, 2),
        (D("0"), D("0.25"), 10, 0),
        (D("-1"), D("0.25"), 10, 0),
        (D("0"), D("0"), 10, 10),
        (D("1"), D("0.25"), 0, 0),
    ],
)
def test_edits_that_fit(left, per_image, n, fits):
    assert edits_that_fit(left, per_image, n) == fits


def test_recent_costs_give_their_mean_and_a_range_that_narrows_per_image_as_images_grow():
    recent = [D("0.04"), D("0.05"), D("0.06"), D("0.05")] * 50
    estimate = estimate_per_image(recent, PER_TOKEN, "1024x1024")
    assert estimate.basis == "recent mean of 200 edits" and estimate.mid == D("0.05")
    one, many = estimate.for_images(1), estimate.for_images(1000)
    assert one.low == D("0.04") and one.high == D("0.06")
    assert many.low < many.mid == D("50") < many.high
    assert (many.high - many.low) / 1000 < one.high - one.low


def test_a_price_per_image_is_exact_and_a_price_per_token_gives_a_wide_range():
    exact = estimate_per_image([], PER_IMAGE, "1024x1024")
    assert exact.basis == "price table of 2026-11-01"
    assert exact.for_images(10) == exact.for_images(10).__class__(10, D("0.4"), D("0.4"), D("0.4"))
    wide = estimate_per_image([], PER_TOKEN, "1024x1024")
    assert wide.low < wide.mid < wide.high and wide.high > 5 * wide.low
    # Bigger images cost more; "auto" spans the sizes it may choose.
    assert estimate_per_image([], PER_TOKEN, "2048x2048").mid > wide.mid
    auto = estimate_per_image([], PER_TOKEN, "auto")
    assert auto.low <= wide.low and auto.high >= wide.high


def test_no_price_table_and_no_recent_cost_is_no_estimate():
    assert estimate_per_image([], None, "auto") is None
    assert estimate_per_image([D("0.1")], None, "auto", currency="EUR").currency == "EUR"


def test_a_run_plans_what_fits_the_chain_cap_after_what_was_spent_and_reserved():
    before = spend_plan(
        FIXED, wanted=100, max_spend=D("2"), max_spend_per_run=None, spent=D("1"), reserved_by_others=D("0.4")
    )
    assert before.planned == 15 and before.stopped_by_cap
    plan = with_planned_edits(before, FIXED, planned_edits=15, pending=300)
    assert plan.reservation == D("0.6") and plan.rest_of_catalog.mid == D("12")
    assert "plans 15 of 100 edits, what fits" in plan_line(plan)


def test_a_run_cap_limits_the_run_but_does_not_stop_the_chain():
    before = spend_plan(FIXED, wanted=100, max_spend=D("100"), max_spend_per_run=D("1"))
    assert before.planned == 25 and not before.stopped_by_cap


def test_a_run_planned_again_counts_what_its_calls_spent_before():
    before = spend_plan(
        FIXED, wanted=10, max_spend=D("1"), max_spend_per_run=None, spent_by_this_run=D("0.2")
    )
    assert before.planned == 10
    plan = with_planned_edits(before, FIXED, planned_edits=10, pending=10, spent_by_this_run=D("0.2"))
    assert plan.reservation == D("0.6")


def test_without_a_cap_nothing_is_held_back_or_reserved():
    plan = with_planned_edits(
        spend_plan(FIXED, wanted=7, max_spend=None, max_spend_per_run=None), FIXED, planned_edits=7, pending=9
    )
    assert plan.planned == 7 and plan.reservation is None and plan.this_run.mid == D("0.28")
    assert SpendPlan.load(plan.dump(), "xcom") == plan


def test_blocked_by_budget_is_the_cap_error_only():
    assert is_blocked_by_budget(
        EditFailure(reason="blocked by budget: ...", error="BetterTokenSpendCapError")
    )
    assert not is_blocked_by_budget(EditFailure(reason="not sent: ...", error="BetterTokenBudgetError"))


def _chain(**fields) -> ChainState:
    return ChainState(dag_id="d", root_run_id="r", source_uri="s3://a/", dest_uri="s3://b/", **fields)


def test_the_chain_counts_other_runs_spend_and_reservations_and_keeps_a_runs_own():
    spent = RunResult("r", 4, 4, 0, 0, None, 1.0, spend=RunSpend(cost=D("0.16")))
    chain = _chain(runs=(spent,), reservations={"r__chunk2": D("0.2"), "r__chunk3": D("0.3")})
    assert chain.under_cap("r__chunk3") == (D("0.16"), D("0.2"))
    plan = SpendPlan(max_spend=D("1"), spent=D("0.16"), reserved_by_others=D("0.2"), reservation=D("0.3"))
    reserved = with_reservation(chain, "r__chunk3", plan)
    assert reserved.reservations["r__chunk3"] == D("0.3") and reserved.max_spend == D("1")
    assert ChainState.load(reserved.dump(), "chain") == reserved


def test_a_reservation_that_no_longer_fits_a_fresher_record_plans_again():
    chain = _chain(reservations={"other": D("0.9")})
    plan = SpendPlan(max_spend=D("1"), spent=D("0"), reserved_by_others=D("0"), reservation=D("0.5"))
    with pytest.raises(BetterTokenRecordConflictError, match="planning again"):
        with_reservation(chain, "mine", plan)
