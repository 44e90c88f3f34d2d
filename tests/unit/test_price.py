"""The price table: what parses, what fails (naming the connection and the field), and what a call costs."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_bettertoken.exceptions import BetterTokenConfigError
from airflow_bettertoken.protocol.price import PriceTable, Pricing, TokenPrices, money, price_table_of
from airflow_bettertoken.protocol.spend import Call, EditEntry, Holder, Outcome, OutputLedger, run_spend

# The structure of OpenAI's gpt-image pricing, with made-up figures: tests hold no price data.
TOKENS = {"text_input": "5.00", "image_input": "10.00", "image_output": "40.00"}
TABLE = {"currency": "USD", "taken_on": "2025-06-01", "per_million_tokens": TOKENS}
USAGE = {
    "input_tokens": 400,
    "input_tokens_details": {"text_tokens": 77, "image_tokens": 323},
    "output_tokens": 4160,
    "total_tokens": 4560,
}


def table(**changes) -> PriceTable:
    found = price_table_of({"prices": {**TABLE, **changes}}, "bettertoken_default")
    assert found is not None
    return found


def test_no_prices_is_no_table():
    assert price_table_of({"timeout": 60}, "c") is None


def test_a_table_reads_decimal_strings_and_json_numbers_alike():
    found = table(per_million_tokens={"text_input": "5", "image_input": 10, "image_output": 40.5})
    assert found.per_million_tokens == TokenPrices(Decimal("5"), Decimal("10"), Decimal("40.5"))
    assert all(isinstance(price, Decimal) for price in vars(found.per_million_tokens).values())


@pytest.mark.parametrize(
    ("prices", "field", "says"),
    [
        ({**TABLE, "currency": "usd"}, '"prices.currency"', "three upper-case letters"),
        ({**TABLE, "currency": None}, '"prices.currency"', "string"),
        ({**TABLE, "taken_on": "June 2025"}, '"prices.taken_on"', "ISO date"),
        ({k: v for k, v in TABLE.items() if k != "taken_on"}, '"prices.taken_on"', "is missing"),
        (
            {"currency": "USD", "taken_on": "2025-06-01"},
            '"prices"',
            "neither per_million_tokens nor per_image",
        ),
        (
            {**TABLE, "per_million_tokens": {**TOKENS, "image_output": "forty"}},
            '"prices.per_million_tokens.image_output"',
            "decimal string",
        ),
        (
            {**TABLE, "per_million_tokens": {**TOKENS, "image_output": True}},
            '"prices.per_million_tokens.image_output"',
            "decimal string",
        ),
        (
            {**TABLE, "per_million_tokens": {"text_input": "5", "image_input": "10"}},
            '"prices.per_million_tokens.image_output"',
            "is missing",
        ),
        (
            {**TABLE, "per_million_tokens": {**TOKENS, "text_output": "10"}},
            '"prices.per_million_tokens.text_output"',
            "unknown field",
        ),
        ({**TABLE, "per_image": {"1024x1024": "-0.01"}}, '"prices.per_image.1024x1024"', "at least 0"),
        ({**TABLE, "per_image": {"1024x1024": "NaN"}}, '"prices.per_image.1024x1024"', "finite"),
        ({**TABLE, "per_imag": {"1024x1024": "0.1"}}, '"prices.per_imag"', "unknown field"),
        ("USD 5", "'prices'", "must be an object"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_table_that_does_not_parse_names_the_connection_and_the_field(prices, field, says):
    with pytest.raises(BetterTokenConfigError) as info:
        price_table_of({"prices": prices}, "bt_money")
    message = str(info.value)
    assert message.startswith("connection 'bt_money', extra 'prices'")
    assert field in message and says in message


def test_the_cost_of_a_call_from_its_usage():
    # (77 x 5 + 323 x 10 + 4160 x 40) / 1,000,000
    assert table().cost_of(USAGE, "1024x1024") == Decimal("0.170015")


def test_input_tokens_without_details_are_priced_at_the_higher_input_price():
    usage = {"input_tokens": 400, "output_tokens": 4160, "total_tokens": 4560}
    assert table().cost_of(usage, "auto") == Decimal("0.1704")  # (400 x 10 + 4160 x 40) / 1e6


def test_details_that_do_not_add_up_are_not_trusted():
    usage = {**USAGE, "input_tokens_details": {"text_tokens": 400, "image_tokens": 400}}
    assert table().cost_of(usage, None) == Decimal("0.1704")


@pytest.mark.parametrize(
    ("usage", "size", "cost"),
    [
        (USAGE, "1024x1024", Decimal("0.170015")),  # usage first, when there are token prices
        (None, "1024x1024", Decimal("0.167")),  # no usage: the image's price by size
        ({"total_tokens": 9}, "1024x1024", Decimal("0.167")),  # a usage without its counts
        (None, "auto", Decimal("0.2")),
        (None, "2048x2048", None),  # no price for that size
        (None, None, None),
    ],
)
def test_without_usage_the_price_of_an_image_of_its_size(usage, size, cost):
    both = table(per_image={"1024x1024": "0.167", "auto": "0.2"})
    assert both.cost_of(usage, size) == cost


def test_a_table_of_image_prices_only_ignores_usage():
    found = price_table_of(
        {"prices": {"currency": "EUR", "taken_on": "2025-06-01", "per_image": {"1024x1024": "0.15"}}}, "c"
    )
    assert found.cost_of(USAGE, "1024x1024") == Decimal("0.15")
    assert Pricing("c", found, "1536x1024").cost_of(USAGE) is None


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        ("0.42", "USD 0.42"),
        ("12", "USD 12.00"),
        ("0.170015", "USD 0.17"),
        ("0.16666", "USD 0.1667"),
        ("0", "USD 0.00"),
    ],
)
def test_money_is_shown_to_the_cent_or_to_a_hundredth_of_a_cent(amount, shown):
    assert money(Decimal(amount), "USD") == shown


def test_a_tables_record_round_trips_with_money_as_strings():
    found = table(per_image={"1024x1024": "0.167"}, source="https://example.com/pricing")
    document = found.dump()
    assert document["per_million_tokens"]["image_output"] == "40.00"
    assert document["per_image"] == {"1024x1024": "0.167"}
    assert PriceTable.load(document, "table") == found


HOLDER = Holder("dag", "run-1", "edit", -1, 1, "host")


def priced_call(number: int, outcome: Outcome, cost: str | None, estimated: bool = False) -> Call:
    return Call(
        number=number,
        by=HOLDER,
        token="t",
        sent_at=0.0,
        outcome=outcome,
        cost=None if cost is None else Decimal(cost),
        cost_estimated=estimated,
        currency=None if cost is None else "USD",
    )


def test_a_runs_cost_sums_its_billed_calls_and_counts_those_it_could_not_price():
    calls = (
        priced_call(1, Outcome.MAYBE_BILLED, "0.17", estimated=True),
        priced_call(2, Outcome.PAID, "0.170015"),
        priced_call(3, Outcome.NOT_BILLED, None),
        priced_call(4, Outcome.OPEN, None),  # its sender died: billed, and never priced
    )
    ledger = OutputLedger("s3://out/a.png", edits=(EditEntry("e" * 64, calls),))
    spend = run_spend([ledger], "dag", "run-1")
    assert (spend.cost, spend.cost_estimated, spend.calls_unpriced) == (
        Decimal("0.340015"),
        Decimal("0.17"),
        1,
    )
    assert run_spend([ledger], "dag", "run-2").cost == Decimal(0)
