"""Money before it is paid: the estimate of a run and of a catalog, and the cap a chain of runs stays under.

The estimate of one image's cost comes from the recent costs per image of the connection and size
(``storage/costs.py``), or, before any edit was priced, from the connection's price table. A run
reserves the high end of its planned edits' estimate against what is left of its chain's
``max_spend`` and plans only what fits (:func:`spend_plan`); its edits then stop once their calls
have used the reservation up (``storage/run_budget.py``).

Pure code: no I/O.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.protocol.record import Record, record

if TYPE_CHECKING:
    from airflow_bettertoken.protocol.price import PriceTable
    from airflow_bettertoken.protocol.result import EditFailure

__all__ = [
    "BLOCKED_BY_BUDGET",
    "Estimate",
    "SpendPlan",
    "SpendRange",
    "edits_that_fit",
    "estimate_per_image",
    "is_blocked_by_budget",
    "parse_money",
    "spend_plan",
    "with_planned_edits",
]

#: The state of an edit that its run's reservation under ``max_spend`` did not cover (results table).
BLOCKED_BY_BUDGET = "blocked by budget"
# The error an edit blocked by the cap fails with (exceptions.BetterTokenSpendCapError), by name.
_CAP_ERROR = "BetterTokenSpendCapError"
_MONEY = re.compile(r"^\s*(?:([A-Z]{3})\s+)?([0-9]+(?:\.[0-9]+)?)\s*$")
# Figures are kept to a millionth: an image can cost a fraction of a cent, and sums must not drift.
_EXACT = Decimal("0.000001")
# Output tokens of one image by size, low to high quality, as OpenAI lists them for gpt-image-1; a
# price per token gives a wide range until the connection's own edits give a recent mean.
_OUTPUT_TOKENS = {
    "1024x1024": (272, 1056, 4160),
    "1024x1536": (408, 1584, 6240),
    "1536x1024": (400, 1568, 6208),
}
# Input tokens of one edit: the prompt's text, and each source image.
_TEXT_TOKENS = (20, 100, 300)
_IMAGE_TOKENS = (200, 800, 1600)


def parse_money(value: Any, name: str) -> tuple[Decimal, str | None] | None:
    """A cap as the user wrote it: ``"25"``, ``"25.50"`` or ``"USD 25.50"`` (a Decimal too); None when unset
    (None, empty, or ``"None"``, which an unset Param renders to).

    :raises BetterTokenInputError: naming ``name`` and the form it takes.
    """
    if value is None or (isinstance(value, str) and value.strip() in ("", "None")):
        return None
    if isinstance(value, Decimal) and value.is_finite() and value >= 0:
        return value, None
    match = (
        _MONEY.match(str(value)) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    )
    if match is None:
        raise BetterTokenInputError(
            f"{name}={value!r} is no amount of money: write it as a decimal string in the price table's "
            'currency, such as "25.00", or with the currency, such as "USD 25.00"'
        )
    try:
        return Decimal(match.group(2)), match.group(1)
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise BetterTokenInputError(f"{name}={value!r} is no amount of money") from None


def _exact(amount: Decimal) -> Decimal:
    return amount.quantize(_EXACT)


@record
class SpendRange(Record):
    """What a number of images should cost: ``mid`` is the estimate, ``low`` and ``high`` its range."""

    images: int
    low: Decimal
    mid: Decimal
    high: Decimal


@record
class Estimate(Record):
    """The estimated cost of one image, in ``currency``.

    :param basis: where it comes from: ``recent mean of N edits`` or ``price table of <date>``.
    :param low: the cheapest an image is expected to cost; ``high`` the dearest; ``mid`` the mean.
    :param spread: the standard deviation of the recent costs (0 for a price table's figures).
    :param samples: the recent costs it was made from (0 for a price table).
    """

    currency: str
    basis: str
    low: Decimal
    mid: Decimal
    high: Decimal
    spread: Decimal = Decimal(0)
    samples: int = 0

    def for_images(self, n: int) -> SpendRange:
        """The cost of ``n`` images: ``n`` times the mean, give or take two standard deviations of a sum
        of ``n`` costs and of the mean itself; never beyond ``n`` times the cheapest or dearest."""
        if n <= 0:
            return SpendRange(0, Decimal(0), Decimal(0), Decimal(0))
        count = Decimal(n)
        mid = count * self.mid
        if self.samples < 2:
            return SpendRange(n, _exact(count * self.low), _exact(mid), _exact(count * self.high))
        half = 2 * self.spread * (count.sqrt() + count / Decimal(self.samples).sqrt())
        low = max(count * self.low, mid - half)
        high = min(count * self.high, mid + half)
        return SpendRange(n, _exact(low), _exact(mid), _exact(high))

    def images_within(self, left: Decimal, limit: int) -> int:
        """The most images, up to ``limit``, whose high estimate fits in ``left``."""
        fit = edits_that_fit(left, self.mid, limit)  # the high end is at least the mean: no more fit
        low, high = 0, fit
        while low < high:  # the high estimate grows with the images: the last count that fits
            middle = (low + high + 1) // 2
            if self.for_images(middle).high <= left:
                low = middle
            else:
                high = middle - 1
        return low


def edits_that_fit(left: Decimal, per_image: Decimal, n: int) -> int:
    """How many of ``n`` edits at ``per_image`` each fit in ``left``."""
    if n <= 0 or left < 0:
        return 0
    if per_image <= 0:
        return n
    return min(n, int(left // per_image))


def estimate_per_image(
    recent: Sequence[Decimal],
    table: PriceTable | None,
    size: str,
    *,
    currency: str | None = None,
    sources: int = 1,
) -> Estimate | None:
    """One image's estimated cost: from the recent costs per image when there are some, else from the
    price table; None when neither gives one.

    :param recent: the recent costs of an image of this size on this connection (``storage/costs.py``).
    :param currency: the recent costs' currency, when there is no price table to give it.
    :param sources: the source images of one edit, for a price per token.
    """
    currency = table.currency if table is not None else currency
    if recent and currency:
        costs = [Decimal(cost) for cost in recent]
        spread = Decimal(statistics.pstdev(costs)) if len(costs) > 1 else Decimal(0)
        mean = sum(costs, Decimal(0)) / len(costs)
        return Estimate(
            currency=currency,
            basis=f"recent mean of {len(costs)} edits",
            low=_exact(min(costs)),
            mid=_exact(mean),
            high=_exact(max(costs)),
            spread=_exact(spread),
            samples=len(costs),
        )
    if table is None:
        return None
    basis = f"price table of {table.taken_on}"
    if table.per_image:
        prices = [table.per_image[size]] if size in table.per_image else list(table.per_image.values())
        mean = sum(prices, Decimal(0)) / len(prices)
        return Estimate(table.currency, basis, _exact(min(prices)), _exact(mean), _exact(max(prices)))
    if table.per_million_tokens is not None:
        low, mid, high = (
            _exact(table.cost_of(usage, size) or Decimal(0)) for usage in _usages(size, sources)
        )
        return Estimate(table.currency, f"{basis}, with typical token counts", low, mid, high)
    return None


def _usages(size: str, sources: int) -> list[dict[str, Any]]:
    """Typical usages of one edit (low, mid, high), in OpenAI's form, for a price per token."""
    if size in _OUTPUT_TOKENS:
        outputs = _OUTPUT_TOKENS[size]
    elif "x" in size:  # a larger size: the square's tokens, by its pixels
        width, height = (int(side) for side in size.split("x"))
        outputs = tuple(round(tokens * width * height / 1024**2) for tokens in _OUTPUT_TOKENS["1024x1024"])
    else:  # auto: any of the sizes it may choose
        outputs = (
            min(t[0] for t in _OUTPUT_TOKENS.values()),
            _OUTPUT_TOKENS["1024x1024"][1],
            max(t[2] for t in _OUTPUT_TOKENS.values()),
        )
    usages = []
    for text, image, output in zip(_TEXT_TOKENS, _IMAGE_TOKENS, outputs, strict=True):
        details = {"text_tokens": text, "image_tokens": image * sources}
        usage = {"input_tokens": text + image * sources, "output_tokens": output}
        usages.append({**usage, "input_tokens_details": details})
    return usages


@record
class SpendPlan(Record):
    """What a run plans to spend and may: the XCom ``estimate`` of a listing, and the chain's last one.

    :param this_run: the estimate of the edits this run plans; ``rest_of_catalog`` of every image still
        pending in the catalog, this run's included. None without an estimate.
    :param spent: what the chain's settled runs cost; ``reserved_by_others`` what its unsettled runs reserved.
    :param reservation: what this run may spend (its own earlier calls included), when a cap is set.
    :param wanted: the edits the run would plan without a cap; ``planned`` those it plans.
    :param stopped_by_cap: the chain's ``max_spend`` kept edits back: the chain stops after this run.
    """

    currency: str | None = None
    basis: str | None = None
    this_run: SpendRange | None = None
    rest_of_catalog: SpendRange | None = None
    max_spend: Decimal | None = None
    max_spend_per_run: Decimal | None = None
    spent: Decimal = Decimal(0)
    reserved_by_others: Decimal = Decimal(0)
    reservation: Decimal | None = None
    wanted: int = 0
    planned: int = 0
    stopped_by_cap: bool = False

    @property
    def left(self) -> Decimal | None:
        """What the chain's cap leaves once its settled runs and the other runs' reservations are counted."""
        if self.max_spend is None:
            return None
        return self.max_spend - self.spent - self.reserved_by_others


def spend_plan(
    estimate: Estimate | None,
    *,
    wanted: int,
    max_spend: Decimal | None,
    max_spend_per_run: Decimal | None,
    spent: Decimal = Decimal(0),
    reserved_by_others: Decimal = Decimal(0),
    spent_by_this_run: Decimal = Decimal(0),
) -> SpendPlan:
    """How many of the ``wanted`` edits a run may plan, before it knows which: ``planned`` edits, whose
    high estimate fits in what the caps leave. The reservation is set by :func:`with_planned_edits`.

    :param spent_by_this_run: what this run's calls cost already (a run cleared and run again).
    """
    capped = max_spend is not None or max_spend_per_run is not None
    plan = SpendPlan(
        currency=estimate.currency if estimate else None,
        basis=estimate.basis if estimate else None,
        max_spend=max_spend,
        max_spend_per_run=max_spend_per_run,
        spent=spent,
        reserved_by_others=reserved_by_others,
        wanted=wanted,
        planned=wanted,
    )
    if not capped or estimate is None:
        return plan
    fits = wanted
    if max_spend_per_run is not None:
        fits = estimate.images_within(max_spend_per_run - spent_by_this_run, fits)
    stopped = False
    if plan.left is not None:
        under_chain_cap = estimate.images_within(plan.left - spent_by_this_run, fits)
        stopped = under_chain_cap < fits
        fits = under_chain_cap
    return SpendPlan(**{**_fields(plan), "planned": fits, "stopped_by_cap": stopped})


def with_planned_edits(
    plan: SpendPlan,
    estimate: Estimate | None,
    *,
    planned_edits: int,
    pending: int,
    spent_by_this_run: Decimal = Decimal(0),
) -> SpendPlan:
    """The plan once the run knows its edits: their estimate, the rest of the catalog's, and the run's
    reservation (the high end of its edits' estimate, plus what it spent already) when a cap is set."""
    if estimate is None:
        return SpendPlan(**{**_fields(plan), "planned": planned_edits})
    capped = plan.max_spend is not None or plan.max_spend_per_run is not None
    this_run = estimate.for_images(planned_edits)
    return SpendPlan(
        **{
            **_fields(plan),
            "planned": planned_edits,
            "this_run": this_run,
            "rest_of_catalog": estimate.for_images(pending),
            "reservation": spent_by_this_run + this_run.high if capped else None,
        }
    )


def _fields(plan: SpendPlan) -> dict[str, Any]:
    return {name: getattr(plan, name) for name in SpendPlan.__dataclass_fields__}


def is_blocked_by_budget(failure: EditFailure) -> bool:
    """Whether an edit failed because its run's reservation under ``max_spend`` was used up (or the
    records of the cap could not be read): no call was sent, and a chain plans it again."""
    return failure.error == _CAP_ERROR


def plan_line(plan: SpendPlan) -> str:
    """One log line on what the run should cost, what the rest of the catalog should, and the cap."""
    from airflow_bettertoken.protocol.price import money

    if plan.currency is None or plan.this_run is None:
        line = "No estimate of the cost: the connection has no price table (extra 'prices')"
        return line if plan.reservation is None else f"{line}; max_spend cannot be kept"
    cur = plan.currency

    def spread(what: SpendRange) -> str:
        return f"{money(what.mid, cur)} ({money(what.low, cur)} to {money(what.high, cur)})"

    line = (
        f"Estimate ({plan.basis}): this run's {plan.this_run.images:,} edits {spread(plan.this_run)}; "
        f"the {plan.rest_of_catalog.images if plan.rest_of_catalog else 0:,} images still pending in the "
        f"catalog {spread(plan.rest_of_catalog) if plan.rest_of_catalog else '-'}"
    )
    if plan.reservation is None:
        return line
    caps = []
    if plan.max_spend is not None:
        caps.append(
            f"max_spend {money(plan.max_spend, cur)}: the chain spent {money(plan.spent, cur)} and its "
            f"other runs reserved {money(plan.reserved_by_others, cur)}"
        )
    if plan.max_spend_per_run is not None:
        caps.append(f"max_spend_per_run {money(plan.max_spend_per_run, cur)}")
    line = f"{line}; {'; '.join(caps)}; this run reserves {money(plan.reservation, cur)}"
    if plan.planned < plan.wanted:
        line += f" and plans {plan.planned:,} of {plan.wanted:,} edits, what fits"
    return line
