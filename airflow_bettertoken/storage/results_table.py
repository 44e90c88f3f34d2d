"""The results table of a table's run: one row per input row, and how each row's state is decided.

A row's state, from its plan row (:mod:`.table_plan`), this run's edits and the previous ``latest``
table:

==================  ==============================================================================
``done``            its output was made by an edit: this run's, or an earlier one the previous
                    ``latest`` table recorded (its figures are carried over)
``skipped``         its output existed and nothing was paid for it: the planner found it (and no
                    earlier table says more), or the edit task did (``if_exists="skip"``)
``failed``          this run's edit failed and a later try or run may succeed; ``error`` says why
``failed for good`` no retry can help (bad input, an unusable paid answer): in this run or an earlier
                    one of the chain
``blocked by budget`` the edit was refused by a budget (``BetterTokenBudgetError``: its calls, or a
                    money cap); raise the budget to go on
``bad``             the row cannot be an edit (the planner's ``reason``); never paid
``later``           left for a later run of the chain
==================  ==============================================================================

Pure code over records: the reading and writing is in :mod:`.results_writer`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from airflow_bettertoken.exceptions import BetterTokenRecordError
from airflow_bettertoken.protocol.record import Record, record
from airflow_bettertoken.protocol.result import EditFailure, EditXCom
from airflow_bettertoken.protocol.spend import OutputLedger, run_currency
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.table_plan import PlanRow

__all__ = [
    "CARRIED_OVER",
    "COLUMNS",
    "RESULT_STATES",
    "ResultRow",
    "RunOutcomes",
    "merge_row",
    "results_locations",
]

RESULT_STATES = ("done", "skipped", "failed", "failed for good", "blocked by budget", "bad", "later")
#: The plan states whose row may carry the previous ``latest`` table's row over (read only for them).
CARRIED_OVER = ("done", "failed for good")
#: The error class of every budget refusal (``exceptions.BetterTokenBudgetError``), as failures name it.
BUDGET_ERROR = "BetterTokenBudgetError"
# A planned edit whose task pushed neither a result nor a failure (it died, or never ran).
NO_RECORD = "the edit task left no record (it did not run, or died); its log says why"
# A run's files are named after the run id, as its manifest is.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@record
class ResultRow(Record):
    """One row of the results table: one input row, what became of it, and what it cost.

    Its JSON line has exactly these keys (no format key: the columns are the table's contract).

    :param billed_calls: calls for the output that may have been billed, ever (the spend ledger's).
    :param cost: what this run's calls for the output cost, a decimal string, from the spend ledger
        (an estimate: the vendor's invoice is the truth); with ``currency``. None when none was priced.
    :param error: why the row failed, was blocked, or is bad.
    """

    key: str
    state: str
    output_uri: str | None = None
    width: int | None = None
    height: int | None = None
    size_matches: bool | None = None
    sha256: str | None = None
    billed_calls: int | None = None
    cost: str | None = None
    currency: str | None = None
    prompt: str | None = None
    error: str | None = None

    def line(self) -> dict[str, Any]:
        """The row's JSON line, without the format key."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


COLUMNS = tuple(f.name for f in dataclasses.fields(ResultRow))


@dataclass
class RunOutcomes:
    """This run's edits, by output URI: their results and failures (XCom), and what the spend ledgers
    say they cost (:meth:`add_spend`): XCom is no trusted record, so no spend figure comes from it.

    At most one chunk of edits (``[core] max_map_length``), so it is held in memory.
    """

    results: dict[str, EditXCom] = field(default_factory=dict)
    failures: dict[str, EditFailure] = field(default_factory=dict)
    billed_calls: dict[str, int] = field(default_factory=dict)
    costs: dict[str, Decimal] = field(default_factory=dict)
    currency: str | None = None

    @classmethod
    def from_xcom(
        cls, results: Iterable[Any], failures: Iterable[Any], task_id: str | None = None
    ) -> RunOutcomes:
        """From the mapped edit task's return values and ``failure`` XComs (None where none was pushed).

        :raises BetterTokenRecordError: for a value that is no such record, naming the task and the key.
        """
        task = repr(task_id or "the edit task")
        outcomes = cls()
        for value in results:
            if value is not None:
                xcom = EditXCom.load(value, f"XCom 'return_value' of task {task}")
                outcomes.results[xcom.output_uri] = xcom
        for value in failures:
            if value is not None:
                failure = EditFailure.load(value, f"XCom 'failure' of task {task}")
                if failure.dest is not None:
                    outcomes.failures[failure.dest] = failure
        return outcomes

    def add_spend(self, ledgers: Sequence[OutputLedger], dag_id: str, run_id: str) -> None:
        """From the outputs' spend ledgers, for the edits this run sent or refused: each output's billed
        calls, ever, and what this run's calls for it cost; and the run's currency."""
        for ledger in ledgers:
            touched = [
                entry
                for entry in ledger.edits
                if any(c.by.in_run(dag_id, run_id) for c in entry.calls)
                or any(r.by.in_run(dag_id, run_id) for r in entry.refusals)
            ]
            if not touched:
                continue
            self.billed_calls[ledger.output_uri] = sum(entry.billed_calls for entry in touched)
            priced = [
                call.cost
                for entry in touched
                for call in entry.calls
                if call.by.in_run(dag_id, run_id) and call.outcome.may_be_billed and call.cost is not None
            ]
            if priced:
                self.costs[ledger.output_uri] = sum(priced, Decimal(0))
        self.currency = run_currency(ledgers, dag_id, run_id)

    def cost_of(self, output_uri: str | None) -> tuple[str | None, str | None]:
        """A row's ``cost`` and ``currency`` columns."""
        cost = self.costs.get(output_uri or "")
        return (None, None) if cost is None or self.currency is None else (str(cost), self.currency)


def blocked_by_budget(failure: EditFailure) -> bool:
    """Whether a budget refused the edit (its calls, or a money cap), rather than the edit failing."""
    return getattr(failure, "state", None) == "blocked by budget" or failure.error == BUDGET_ERROR


def _failed(plan: PlanRow, failure: EditFailure | None, run: RunOutcomes) -> ResultRow:
    if failure is None:
        state, error = "failed", NO_RECORD
    else:
        state = (
            "blocked by budget"
            if blocked_by_budget(failure)
            else ("failed for good" if failure.for_good else "failed")
        )
        error = f"{failure.error}: {failure.reason}" if failure.error else failure.reason
    cost, currency = run.cost_of(plan.dest)
    return ResultRow(
        plan.key,
        state,
        output_uri=plan.dest,
        billed_calls=run.billed_calls.get(plan.dest or ""),
        cost=cost,
        currency=currency,
        prompt=plan.prompt,
        error=error,
    )


def _made(plan: PlanRow, xcom: EditXCom, run: RunOutcomes) -> ResultRow:
    cost, currency = run.cost_of(xcom.output_uri)
    return ResultRow(
        plan.key,
        "skipped" if xcom.skipped else "done",
        output_uri=xcom.output_uri,
        width=xcom.width,
        height=xcom.height,
        size_matches=xcom.size_matches,
        sha256=xcom.sha256,
        billed_calls=run.billed_calls.get(xcom.output_uri),
        cost=cost,
        currency=currency,
        prompt=plan.prompt,
    )


def merge_row(plan: PlanRow, run: RunOutcomes, previous: ResultRow | None) -> ResultRow:
    """One row of the results table: its plan row, with this run's edit of it, else the previous
    ``latest`` table's row when that tells more (an output made, a failure for good).

    :param previous: the row with this key in the previous ``latest`` table, if any.
    :raises BetterTokenRecordError: for a plan row whose state is none of the plan's states.
    """
    # What an earlier run recorded is kept only for the same output.
    earlier = previous if previous is not None and previous.output_uri == plan.dest else None
    if plan.state == "planned":
        made = run.results.get(plan.dest or "")
        if made is not None:
            return _made(plan, made, run)
        return _failed(plan, run.failures.get(plan.dest or ""), run)
    if plan.state == "done":
        if earlier is not None and earlier.state in ("done", "skipped"):
            # Looked up by key, so only a missing prompt is filled in (a replace validates again).
            return earlier if earlier.prompt is not None else dataclasses.replace(earlier, prompt=plan.prompt)
        return ResultRow(plan.key, "skipped", output_uri=plan.dest, prompt=plan.prompt)
    if plan.state == "failed for good":
        if earlier is not None and earlier.state in ("failed for good", "blocked by budget"):
            return earlier
        reason = plan.reason or "it failed for good in an earlier run of the chain"
        return ResultRow(plan.key, "failed for good", output_uri=plan.dest, prompt=plan.prompt, error=reason)
    if plan.state == "bad":
        return ResultRow(plan.key, "bad", output_uri=plan.dest, prompt=plan.prompt, error=plan.reason)
    if plan.state == "later":
        return ResultRow(plan.key, "later", output_uri=plan.dest, prompt=plan.prompt)
    raise BetterTokenRecordError(
        f"plan row {plan.key!r} (line {plan.line}) has the state {plan.state!r}, which is none of "
        "planned, done, bad, failed for good, later: was the plan written by a later release?"
    )


def results_locations(results_prefix: S3Location, run_id: str, suffix: str) -> tuple[S3Location, S3Location]:
    """The run's table, ``<prefix>runs/<run id><suffix>``, and ``<prefix>latest<suffix>``."""
    prefix = results_prefix.key
    run = S3Location(results_prefix.bucket, f"{prefix}runs/{_UNSAFE.sub('_', run_id)}{suffix}")
    return run, S3Location(results_prefix.bucket, f"{prefix}latest{suffix}")
