"""A run's money under its cap: the reservation its listing made, and the tally of its calls' costs.

Kept in the destination bucket, beside the run's other records::

    _bettertoken/budgets/<dag id>/<run id>/reservation.json   what the run may spend (RunReservation)
    _bettertoken/budgets/<dag id>/<run id>/calls/<id>_<cost>  one empty object per call, its cost in the key

No counter is written by every edit: each call writes its own object *before* it is sent, with its
estimated cost, then lists the run's objects (one LIST page per 1,000 calls) and sends only if their
sum stays within the reservation; otherwise it deletes its object and is blocked by budget. The last
writer among calls that all go ahead saw every one of them (S3 lists what was written before the
LIST), so their estimates together never pass the reservation. When the call ends, its object is
replaced by one with its cost (deleted if it was not billed). A worker that dies leaves its call
counted at the estimate, as the ledger counts it billed.

With no cap, none of this is read or written: an edit makes no extra request.
"""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from airflow_bettertoken.exceptions import BetterTokenSpendCapError
from airflow_bettertoken.protocol.budget import BLOCKED_BY_BUDGET
from airflow_bettertoken.protocol.record import Record, record
from airflow_bettertoken.protocol.spend import Outcome
from airflow_bettertoken.storage.chain import next_chunk_run_id
from airflow_bettertoken.storage.locations import RESERVED_PREFIX, S3Location
from airflow_bettertoken.storage.s3_io import Presence

if TYPE_CHECKING:
    from airflow_bettertoken.storage.ledger import SpendLedger
    from airflow_bettertoken.storage.s3_io import S3IO

__all__ = ["BudgetedGuard", "RunBudget", "RunReservation", "budget_prefix", "run_tally"]

_CALL_KEY = re.compile(r"^[0-9a-f]{32}_([0-9]+(?:\.[0-9]+)?)$")


def budget_prefix(bucket: str, dag_id: str, run_id: str) -> S3Location:
    """Where the run keeps its reservation and its calls' costs."""
    run = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)
    return S3Location(bucket, f"{RESERVED_PREFIX}budgets/{dag_id}/{run}/")


@record
class RunReservation(Record):
    """What a run may spend, as its listing reserved it against its chain's cap.

    :param amount: the reservation: the high end of the planned edits' estimate, plus what the run's
        calls cost before (a run cleared and run again).
    :param per_call: what a call in flight counts for until its cost is known: the mean cost of an image.
    :param max_spend: the chain's cap when it was made; ``max_spend_per_run`` the run's.
    """

    dag_id: str
    run_id: str
    amount: Decimal
    per_call: Decimal
    currency: str
    planned: int
    max_spend: Decimal | None = None
    max_spend_per_run: Decimal | None = None


def _cost_text(cost: Decimal) -> str:
    return format(max(cost, Decimal(0)).normalize(), "f")


def run_tally(io: S3IO, prefix: S3Location) -> tuple[Decimal, int]:
    """The sum of the run's call objects and their number, from LIST pages alone.

    :raises BetterTokenSpendCapError: when a key under ``calls/`` is none the provider wrote: the tally
        cannot be trusted, so nothing is sent.
    """
    calls = S3Location(prefix.bucket, prefix.key + "calls/")
    total, count = Decimal(0), 0
    for page in io.list_pages(calls):
        for key in page:
            match = _CALL_KEY.match(key[len(calls.key) :])
            try:
                cost = Decimal(match.group(1)) if match else None
            except InvalidOperation:
                cost = None
            if cost is None:
                raise BetterTokenSpendCapError(
                    f"{BLOCKED_BY_BUDGET}: s3://{calls.bucket}/{key} is no call of the run's tally, so what "
                    "the run spent is unknown and nothing is sent; delete the object that is not the "
                    "provider's, then clear the edit"
                )
            total, count = total + cost, count + 1
    return total, count


class RunBudget:
    """One edit task's view of its run's reservation and tally (the edit's ``budget``)."""

    def __init__(self, io: S3IO, bucket: str, dag_id: str, run_id: str) -> None:
        self.io = io
        self.prefix = budget_prefix(bucket, dag_id, run_id)
        self.dag_id, self.run_id = dag_id, run_id
        self._reservation: RunReservation | None = None

    @property
    def reservation_location(self) -> S3Location:
        return S3Location(self.prefix.bucket, self.prefix.key + "reservation.json")

    def write_reservation(self, reservation: RunReservation) -> None:
        """The listing's reservation for the run (replaced when the run plans again)."""
        body = json.dumps(reservation.dump(), sort_keys=True).encode()
        self.io.put(self.reservation_location, body, content_type="application/json")

    def reservation(self) -> RunReservation:
        """The run's reservation, read once per edit task.

        :raises BetterTokenSpendCapError: when it is missing or hidden by a 403: without it nothing is sent.
        :raises BetterTokenRecordError: when it does not load.
        """
        if self._reservation is None:
            found = self.io.get(self.reservation_location)
            if not found.found:
                why = "may not be read (403)" if found.presence is Presence.HIDDEN else "is missing"
                raise BetterTokenSpendCapError(
                    f"{BLOCKED_BY_BUDGET}: max_spend is set, but the run's reservation "
                    f"{self.reservation_location.uri} {why}, so nothing is sent. The listing task writes "
                    "it: run the edits after the listing of the same run, with s3:GetObject on "
                    f"{self.prefix.uri}*"
                )
            try:
                document = json.loads(found.body or b"null")
            except ValueError:
                document = None
            self._reservation = RunReservation.load(document, self.reservation_location.uri)
        return self._reservation

    def spent(self) -> Decimal:
        """What the run's calls cost so far (the estimate for a call in flight)."""
        return run_tally(self.io, self.prefix)[0]

    def open_call(self) -> str:
        """Count a call before it is sent; its object's key. Blocked by budget when it does not fit.

        :raises BetterTokenSpendCapError: when the run's calls would pass its reservation.
        """
        reservation = self.reservation()
        key = self._call_key(reservation.per_call)
        self.io.put(key, b"")
        try:
            total, count = run_tally(self.io, self.prefix)
        except Exception:
            self.io.delete(key)
            raise
        if total <= reservation.amount:
            return key.key
        self.io.delete(key)
        raise BetterTokenSpendCapError(self._blocked(reservation, total - reservation.per_call, count - 1))

    def close_call(self, key: str, cost: Decimal | None, *, billed: bool) -> None:
        """The call ended: its object says its cost now; a call not billed counts for nothing."""
        reservation = self.reservation()
        opened = S3Location(self.prefix.bucket, key)
        if billed and (cost is None or cost == reservation.per_call):
            return  # the estimate stays, or it was right: no request
        if billed:
            self.io.put(self._call_key(cost), b"")  # written before the old one goes: never undercounted
        self.io.delete(opened)

    def _call_key(self, cost: Decimal) -> S3Location:
        return S3Location(self.prefix.bucket, f"{self.prefix.key}calls/{uuid.uuid4().hex}_{_cost_text(cost)}")

    def _blocked(self, reservation: RunReservation, used: Decimal, calls: int) -> str:
        from airflow_bettertoken.protocol.price import money

        cur = reservation.currency
        caps = ", ".join(
            f"{name}={money(value, cur)}"
            for name, value in (
                ("max_spend", reservation.max_spend),
                ("max_spend_per_run", reservation.max_spend_per_run),
            )
            if value is not None
        )
        return (
            f"{BLOCKED_BY_BUDGET}: run {self.run_id} reserved {money(reservation.amount, cur)} under {caps} "
            f"for {reservation.planned} edits, and its {calls} calls have used {money(used, cur)}, so this "
            f"call (about {money(reservation.per_call, cur)}) is not sent. To resume without paying again "
            f"for what is done, trigger run {next_chunk_run_id(self.run_id)} of DAG {self.dag_id} with a "
            "higher max_spend in its conf (docs/spend.rst, 'The cap')"
        )


class BudgetedGuard:
    """The spend ledger as the hook's guard, with each call counted in its run's tally first.

    A call blocked by budget never reaches the ledger, and is never sent.
    """

    def __init__(self, ledger: SpendLedger, budget: RunBudget) -> None:
        self.ledger, self.budget = ledger, budget
        self._key: str | None = None

    def before_send(self) -> None:
        self._key = self.budget.open_call()
        try:
            self.ledger.before_send()
        except Exception:
            self.budget.close_call(self._key, None, billed=False)
            self._key = None
            raise

    def after_call(self, outcome: Outcome, **how: Any) -> None:
        self.ledger.after_call(outcome, **how)
        key, self._key = self._key, None
        if key is None:
            return
        mine = [call for call in self.ledger.entry.calls if call.token == self.ledger.token]
        cost = getattr(mine[-1], "cost", None) if mine else None
        self.budget.close_call(key, cost, billed=outcome.may_be_billed)
