"""The recent cost of an image, per destination bucket and BetterToken connection, by size.

Kept beside the outputs, in the destination bucket's reserved prefix::

    _bettertoken/costs/<bettertoken conn id>.json     CostHistory: the last costs of an image, by size

Each run's manifest task adds its paid calls' costs with one conditional write; a run written again
(a cleared manifest task) replaces its own costs. The spend ledger reads the recent mean to estimate
a call that may have been billed and reported no usage, and the budget (``protocol/budget.py``) to
estimate the images still to make. Every figure is an estimate from the connection's price table:
the provider's invoice is the truth.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import Field

from airflow_bettertoken.protocol.record import Record, record
from airflow_bettertoken.protocol.spend import Outcome, OutputLedger
from airflow_bettertoken.storage.locations import RESERVED_PREFIX, S3Location
from airflow_bettertoken.storage.records import ConditionalRecord
from airflow_bettertoken.storage.typed_record import TypedRecord

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

__all__ = [
    "RECENT_COSTS",
    "CostHistory",
    "CostSample",
    "cost_history_location",
    "paid_costs",
    "read_cost_history",
    "record_run_costs",
]

#: Costs kept per size: the mean of the last 200 follows a change of prices within a few runs.
RECENT_COSTS = 200


def cost_history_location(bucket: str, conn_id: str) -> S3Location:
    """Where the recent costs of a BetterToken connection's images are kept, in the destination bucket."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", conn_id)
    return S3Location(bucket, f"{RESERVED_PREFIX}costs/{name}.json")


@record
class CostSample:
    """The cost of one paid call (an image made), from its usage or its price, and the run that paid it."""

    cost: Decimal
    run_id: str


@record
class CostHistory(Record):
    """The recent costs of an image made with one connection, by requested size, in one currency.

    :param currency: the price table's currency; costs in another are dropped when it changes.
    :param by_size: the last :data:`RECENT_COSTS` costs of each size, oldest first.
    """

    conn_id: str
    currency: str
    by_size: dict[str, tuple[CostSample, ...]] = Field(default_factory=dict)

    def recent_cost_per_image(self, size: str) -> list[Decimal]:
        """The recent costs of one image of ``size``, oldest first (empty when none is known)."""
        return [sample.cost for sample in self.by_size.get(size, ())]

    def mean_cost(self, size: str) -> Decimal | None:
        """The mean of the recent costs of an image of ``size``; None when none is known."""
        costs = self.recent_cost_per_image(size)
        return sum(costs, Decimal(0)) / len(costs) if costs else None

    def with_run(self, run_id: str, costs: Mapping[str, Sequence[Decimal]]) -> CostHistory:
        """The history with this run's costs (replacing any it added before), the last of each size kept."""
        sizes = set(self.by_size) | set(costs)
        by_size = {}
        for size in sorted(sizes):
            kept = [s for s in self.by_size.get(size, ()) if s.run_id != run_id]
            kept += [CostSample(cost, run_id) for cost in costs.get(size, ())]
            if kept:
                by_size[size] = tuple(kept[-RECENT_COSTS:])
        return dataclasses.replace(self, by_size=by_size)


def paid_costs(ledgers: Iterable[OutputLedger], dag_id: str, run_id: str) -> dict[str, list[Decimal]]:
    """The costs of one run's paid calls that were priced from their own usage or price (not estimated),
    by requested size."""
    costs: dict[str, list[Decimal]] = {}
    for ledger in ledgers:
        for entry in ledger.edits:
            for call in entry.calls:
                if (
                    call.outcome is Outcome.PAID
                    and call.cost is not None
                    and not call.cost_estimated
                    and call.size is not None
                    and call.by.in_run(dag_id, run_id)
                ):
                    costs.setdefault(call.size, []).append(call.cost)
    return costs


def _history(
    s3_hook: S3Hook, location: S3Location, extra_args: Mapping[str, Any] | None
) -> TypedRecord[CostHistory]:
    return TypedRecord(CostHistory, ConditionalRecord(s3_hook, location, extra_args=extra_args))


def read_cost_history(
    s3_hook: S3Hook, bucket: str, conn_id: str, *, extra_args: Mapping[str, Any] | None = None
) -> CostHistory | None:
    """The connection's recent costs in the bucket; None when no run has recorded any.

    :raises BetterTokenRecordError: when the object is there but holds no cost history.
    """
    return _history(s3_hook, cost_history_location(bucket, conn_id), extra_args).read()


def record_run_costs(
    s3_hook: S3Hook,
    bucket: str,
    conn_id: str,
    run_id: str,
    costs: Mapping[str, Sequence[Decimal]],
    currency: str | None,
    *,
    extra_args: Mapping[str, Any] | None = None,
) -> CostHistory | None:
    """Add one run's paid costs to the connection's history: one conditional write, none without costs."""
    if currency is None or not any(costs.values()):
        return None

    def add(current: CostHistory | None) -> CostHistory:
        if current is None or current.currency != currency:
            current = CostHistory(conn_id=conn_id, currency=currency)  # another currency is not comparable
        return current.with_run(run_id, costs)

    return _history(s3_hook, cost_history_location(bucket, conn_id), extra_args).update(add)
