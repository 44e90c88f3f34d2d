"""Money: a connection's price table, the cost of one call from it, and the one way money is shown.

The price table lives in the BetterToken connection's extra, under ``prices``, in one currency and
dated: prices change, and a figure is only as good as the page it was copied from. Every cost made
from it is an estimate; the provider's invoice is the truth. Money is :class:`~decimal.Decimal`,
never a float, and a string in JSON.

Pure code: no I/O.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError, field_validator, model_validator

from airflow_bettertoken.exceptions import BetterTokenConfigError
from airflow_bettertoken.protocol.record import Record, record

__all__ = ["PRICES_EXTRA", "PriceTable", "Pricing", "TokenPrices", "money", "price_table_of"]

#: The connection extra that holds the price table.
PRICES_EXTRA = "prices"
_MILLION = Decimal(1_000_000)
# Money is shown to the cent and a little below: an image can cost a fraction of a cent.
_SHOWN = Decimal("0.0001")


def _amount(value: Any) -> Decimal:
    """A price: a decimal string such as ``"40.00"`` (or a JSON number), finite and not negative."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise ValueError(f'must be a decimal string such as "40.00", got {value!r}')
    try:
        # A JSON number arrives as a float; its shortest repr is the text the user wrote.
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f'must be a decimal string such as "40.00", got {value!r}') from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"must be a finite amount of at least 0, got {value!r}")
    return amount


@record
class TokenPrices:
    """Prices per 1,000,000 tokens, as OpenAI's gpt-image pricing lists them."""

    text_input: Decimal
    image_input: Decimal
    image_output: Decimal

    @field_validator("text_input", "image_input", "image_output", mode="before")
    @classmethod
    def _money(cls, value: Any) -> Decimal:
        return _amount(value)


@record
class PriceTable(Record):
    """The price table of a connection: per token kind, or per image by size (or both).

    :param currency: three upper-case letters, e.g. ``USD``.
    :param taken_on: the day the prices were copied from the provider's page (ISO, ``2025-06-01``).
    :param source: the price page, for whoever checks the figures.
    :param per_million_tokens: prices per 1,000,000 tokens; used when a call reports its usage.
    :param per_image: the price of one image by requested size (``auto`` allowed); used when a call
        reports no usage, or when there are no token prices.
    """

    currency: str
    taken_on: str
    source: str | None = None
    per_million_tokens: TokenPrices | None = None
    per_image: dict[str, Decimal] | None = None

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{3}", value):
            raise ValueError(f"must be three upper-case letters such as USD, got {value!r}")
        return value

    @field_validator("taken_on")
    @classmethod
    def _taken_on(cls, value: str) -> str:
        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            raise ValueError(
                f"must be the ISO date the prices were taken, such as 2025-06-01, got {value!r}"
            ) from None
        return value

    @field_validator("per_image", mode="before")
    @classmethod
    def _per_image(cls, value: Any) -> Any:
        return (
            {size: _amount(price) for size, price in value.items()} if isinstance(value, Mapping) else value
        )

    @model_validator(mode="after")
    def _some_prices(self) -> PriceTable:
        if self.per_million_tokens is None and not self.per_image:
            raise ValueError("has neither per_million_tokens nor per_image: give at least one")
        return self

    def cost_of(self, usage: Mapping[str, Any] | None, size: str | None) -> Decimal | None:
        """The cost of one paid call: from its token usage when there are token prices and it reports
        usage, else the price of an image of ``size``; None when neither applies.

        Input tokens a usage does not split into text and image are priced at the higher input price,
        so that the estimate errs high.
        """
        tokens = self.per_million_tokens
        if tokens is not None and usage:
            counted = _token_counts(usage)
            if counted is not None:
                text, image, undetailed, output = counted
                higher = max(tokens.text_input, tokens.image_input)
                total = (
                    text * tokens.text_input
                    + image * tokens.image_input
                    + undetailed * higher
                    + output * tokens.image_output
                )
                return total / _MILLION
        if self.per_image and size is not None and size in self.per_image:
            return self.per_image[size]
        return None


@dataclass(frozen=True)
class Pricing:
    """What prices one edit's calls: the connection's price table, the connection, the requested size.

    The hook passes it with every call's end to the spend ledger, which writes the call's cost; the
    connection names the recent costs that estimate a call that may have been billed without usage.
    """

    conn_id: str
    table: PriceTable
    size: str

    @property
    def currency(self) -> str:
        return self.table.currency

    def cost_of(self, usage: Mapping[str, Any] | None) -> Decimal | None:
        return self.table.cost_of(usage, self.size)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _token_counts(usage: Mapping[str, Any]) -> tuple[int, int, int, int] | None:
    """Text, image, undetailed input tokens and output tokens of an OpenAI-style usage; None without
    input or output tokens."""
    inputs, output = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    if inputs is None or output is None:
        return None
    details = usage.get("input_tokens_details")
    details = details if isinstance(details, Mapping) else {}
    text = _count(details.get("text_tokens")) or 0
    image = _count(details.get("image_tokens")) or 0
    if text + image > inputs:
        return 0, 0, inputs, output  # details that do not add up are not trusted
    return text, image, inputs - text - image, output


def price_table_of(extra: Mapping[str, Any], conn_id: str) -> PriceTable | None:
    """The connection's price table (its extra ``prices``), or None when it has none.

    :raises BetterTokenConfigError: naming the connection and the field, when the table does not parse.
    """
    document = extra.get(PRICES_EXTRA)
    if document is None:
        return None
    where = f"connection {conn_id!r}, extra {PRICES_EXTRA!r}"
    if not isinstance(document, Mapping):
        raise BetterTokenConfigError(
            f'{where} must be an object such as {{"currency": "USD", "taken_on": "2025-06-01", '
            f'"per_million_tokens": {{...}}}}, got {type(document).__name__}; see docs/connections.rst'
        )
    _check_keys(document, PriceTable, PRICES_EXTRA, where)
    tokens, per_image = document.get("per_million_tokens"), document.get("per_image")
    if isinstance(tokens, Mapping):
        _check_keys(tokens, TokenPrices, f"{PRICES_EXTRA}.per_million_tokens", where)
    for size, price in per_image.items() if isinstance(per_image, Mapping) else ():
        try:
            _amount(price)
        except ValueError as err:
            raise BetterTokenConfigError(f'{where}: "{PRICES_EXTRA}.per_image.{size}" {err}') from None
    try:
        return PriceTable(**document)
    except ValidationError as err:
        raise BetterTokenConfigError(f"{where}: {_first_problem(err)}; see docs/connections.rst") from None


def _check_keys(document: Mapping[str, Any], kind: type, field: str, where: str) -> None:
    """A misspelt key would silently drop its prices: every key must be one the table knows."""
    known = sorted(f.name for f in dataclasses.fields(kind))
    unknown = sorted(str(key) for key in document if key not in known)
    if unknown:
        raise BetterTokenConfigError(
            f'{where}: unknown field "{field}.{unknown[0]}"; it may hold: {", ".join(known)}'
        )


def _first_problem(err: ValidationError) -> str:
    """The first problem, named by its dotted field: ``"prices.per_million_tokens.image_output": ...``."""
    problem = err.errors()[0]
    field = ".".join(str(part) for part in (PRICES_EXTRA, *problem["loc"]))
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "missing":
        message = "is missing"
    more = err.error_count() - 1
    return f'"{field}" {message}' + (f" (and {more} more problems)" if more > 0 else "")


def money(amount: Decimal, currency: str) -> str:
    """Money as users read it: ``USD 0.42`` (to the ten-thousandth when a fraction of a cent matters)."""
    shown = amount.quantize(_SHOWN, rounding=ROUND_HALF_EVEN)
    cents = shown.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    return f"{currency} {cents if cents == shown else shown.normalize():f}"
