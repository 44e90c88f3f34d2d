"""The estimate and the cap of a planner: what a run should cost, and how much of its chunk fits the cap.

Any task that plans a chunk of edits (the catalog listing, a table's planner) calls it the same way::

    cap = SpendCap(io, hook, bucket=dest.bucket, dag_id=ti.dag_id, run_id=ti.run_id, size=size,
                   max_spend=..., max_spend_per_run=...)
    before = cap.before_planning(chain, wanted=max_edits)     # how many edits fit: before.planned
    ... plan at most before.planned edits ...
    plan = cap.after_planning(before, planned=len(edits), pending=...)
    chain_record.update(lambda current: with_reservation(with_window_of(current, ...), run_id, plan))
    cap.reserve(plan)                                           # the edits read it before each call
    ti.xcom_push(key=ESTIMATE_KEY, value=plan.dump())
"""

from __future__ import annotations

import json
import logging
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from airflow_bettertoken.exceptions import BetterTokenConfigError, BetterTokenError, BetterTokenSpendCapError
from airflow_bettertoken.protocol.budget import (
    BLOCKED_BY_BUDGET,
    Estimate,
    SpendPlan,
    estimate_per_image,
    parse_money,
    plan_line,
    spend_plan,
    with_planned_edits,
)
from airflow_bettertoken.protocol.templates import is_template
from airflow_bettertoken.storage.costs import CostHistory, cost_history_location
from airflow_bettertoken.storage.run_budget import RunBudget, RunReservation
from airflow_bettertoken.storage.s3_io import Presence

if TYPE_CHECKING:
    from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
    from airflow_bettertoken.storage.chain import ChainState
    from airflow_bettertoken.storage.locations import S3Location
    from airflow_bettertoken.storage.s3_io import S3IO

__all__ = ["ESTIMATE_KEY", "SpendCap", "spend_caps"]

#: The XCom key of a planner's estimate and cap figures (:class:`SpendPlan`).
ESTIMATE_KEY = "estimate"

log = logging.getLogger(__name__)


def spend_caps(max_spend: Any, max_spend_per_run: Any, caller: str) -> dict[str, Any]:
    """The caps a task group gives its planner and its edits (those set), each checked now unless it is
    a template, which is checked when rendered: a mistyped cap fails the DAG when it is parsed."""
    caps = {"max_spend": max_spend, "max_spend_per_run": max_spend_per_run}
    for name, cap in caps.items():
        if isinstance(cap, (int, Decimal)) or (isinstance(cap, str) and not is_template(cap)):
            parse_money(cap, f"{caller} {name}")
    return {name: cap for name, cap in caps.items() if cap is not None}


class SpendCap:
    """One planning run's estimate and cap.

    :param size: the size the edits ask for: the estimate is per size.
    :param max_spend: the chain's cap (``"25.00"`` or ``"USD 25.00"``); None or empty: none.
    :param max_spend_per_run: the cap of one run of the chain.
    """

    def __init__(
        self,
        io: S3IO,
        hook: BetterTokenHook,
        *,
        bucket: str,
        dag_id: str,
        run_id: str,
        size: str,
        max_spend: object = None,
        max_spend_per_run: object = None,
    ) -> None:
        self.io, self.hook = io, hook
        self.bucket, self.size = bucket, size or "auto"
        self.budget = RunBudget(io, bucket, dag_id, run_id)
        chain_cap = parse_money(max_spend, "max_spend")
        run_cap = parse_money(max_spend_per_run, "max_spend_per_run")
        self.max_spend = chain_cap[0] if chain_cap else None
        self.max_spend_per_run = run_cap[0] if run_cap else None
        self._currencies = {cap[1] for cap in (chain_cap, run_cap) if cap and cap[1]}
        self.estimate: Estimate | None = None
        self._spent_by_this_run = Decimal(0)

    @property
    def capped(self) -> bool:
        return self.max_spend is not None or self.max_spend_per_run is not None

    def before_planning(
        self, chain: ChainState | None, *, wanted: int, chain_location: S3Location | None = None
    ) -> SpendPlan:
        """How many of ``wanted`` edits fit the caps (``planned``), from the chain's record as read.

        :param chain_location: where the chain's record is: with a cap, a record that a 403 hides is
            an error, not a first run.
        :raises BetterTokenSpendCapError: with a cap, when a record it is computed from cannot be read.
        :raises BetterTokenConfigError: with a cap, when there is no way to estimate a cost.
        """
        self.estimate = self._estimate()
        if not self.capped:
            return spend_plan(self.estimate, wanted=wanted, max_spend=None, max_spend_per_run=None)
        if self.estimate is None:
            raise BetterTokenConfigError(
                f"max_spend needs the cost of an image, and connection {self.hook.bettertoken_conn_id!r} has "
                "no price table: add one to its extra 'prices' (docs/spend.rst), or unset max_spend"
            )
        wrong = self._currencies - {self.estimate.currency}
        if wrong:
            raise BetterTokenConfigError(
                f"max_spend is in {wrong.pop()}, but connection {self.hook.bettertoken_conn_id!r} prices in "
                f"{self.estimate.currency}: give the cap in {self.estimate.currency}"
            )
        if chain is None and chain_location is not None:
            self._check_readable(chain_location, "the chain's record")
        self._spent_by_this_run = self.budget.spent()
        spent, reserved = chain.under_cap(self.budget.run_id) if chain is not None else (Decimal(0),) * 2
        return spend_plan(
            self.estimate,
            wanted=wanted,
            max_spend=self.max_spend,
            max_spend_per_run=self.max_spend_per_run,
            spent=spent,
            reserved_by_others=reserved,
            spent_by_this_run=self._spent_by_this_run,
        )

    def after_planning(self, before: SpendPlan, *, planned: int, pending: int, remaining: int) -> SpendPlan:
        """The plan once its edits are known: their estimate and the run's reservation; the chain stops
        for the cap only when edits remain that the cap kept back."""
        plan = with_planned_edits(
            before,
            self.estimate,
            planned_edits=planned,
            pending=pending,
            spent_by_this_run=self._spent_by_this_run,
        )
        stopped = before.stopped_by_cap and remaining > 0
        return SpendPlan(
            **{**{f: getattr(plan, f) for f in SpendPlan.__dataclass_fields__}, "stopped_by_cap": stopped}
        )

    def reserve(self, plan: SpendPlan) -> None:
        """Write the run's reservation where its edits read it; nothing without a cap."""
        if plan.reservation is None or self.estimate is None:
            return
        self.budget.write_reservation(
            RunReservation(
                dag_id=self.budget.dag_id,
                run_id=self.budget.run_id,
                amount=plan.reservation,
                per_call=self.estimate.mid,
                currency=self.estimate.currency,
                planned=plan.planned,
                max_spend=self.max_spend,
                max_spend_per_run=self.max_spend_per_run,
            )
        )

    @staticmethod
    def line(plan: SpendPlan) -> str:
        return plan_line(plan)

    def _estimate(self) -> Estimate | None:
        try:
            recent, currency = self._recent_costs()
            table = self.hook.price_table()
            if table is not None and currency not in (None, table.currency):
                recent = []  # costs in another currency than today's prices say nothing of them
            return estimate_per_image(recent, table, self.size, currency=currency)
        except BetterTokenError as err:
            if self.capped:
                raise
            # Without a cap the estimate is a report: the preflight and the edits check the connection.
            log.warning("No estimate of the cost: %s", err)
            return None

    def _recent_costs(self) -> tuple[list[Decimal], str | None]:
        """The connection's recent costs per image of this size (``storage/costs.py``), and their currency."""
        location = cost_history_location(self.bucket, self.hook.bettertoken_conn_id)
        found = self.io.get(location)
        if found.presence is Presence.HIDDEN and self.capped:
            self._check_readable(location, "the connection's cost history")
        if not found.found:
            return [], None
        try:
            document = json.loads(found.body or b"null")
        except ValueError:
            document = None  # loads as no record, an error naming the object
        history = CostHistory.load(document, location.uri)
        return list(history.recent_cost_per_image(self.size)), history.currency

    def _check_readable(self, location: S3Location, what: str) -> None:
        if self.io.head(location).presence is Presence.HIDDEN:
            raise BetterTokenSpendCapError(
                f"{BLOCKED_BY_BUDGET}: max_spend is set, but {what} {location.uri} may not be read (403), so "
                f"what was spent is unknown and nothing is planned: give connection {self.io.conn_id!r} "
                f"s3:GetObject and s3:ListBucket on arn:aws:s3:::{location.bucket}"
            )
