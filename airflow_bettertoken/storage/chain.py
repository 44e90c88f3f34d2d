"""A catalog backfill's progress, kept per chain of runs, so that no run lists what an earlier one did.

One record per chain (the first run and the runs it triggers, ``X``, ``X__chunk2``, ...), in the
destination bucket at ``_bettertoken/chains/<dag id>/<first run id>.json``:

- The chain's first run lists the whole catalog once (sources and outputs) and counts it.
- Every later run lists sources only after the **watermark**, the last source key an earlier run
  settled (``StartAfter``), a page at a time until its chunk is full, and outputs only across the
  range of the keys it plans. A run cleared and run again plans its own window again.
- Edits that failed and may succeed on another try are planned first by the next run; edits that
  failed for good (bad input, the spend budget spent) are not planned again unless asked.

What changes behind the watermark during a chain (a deleted output, a new source among listed
keys) is noticed by the next chain: a new trigger lists the catalog afresh.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AliasChoices, Field, TypeAdapter, field_serializer, field_validator

from airflow_bettertoken.exceptions import BetterTokenRecordConflictError
from airflow_bettertoken.protocol.budget import SpendPlan, is_blocked_by_budget
from airflow_bettertoken.protocol.record import Record, record
from airflow_bettertoken.protocol.result import EditFailure, first_line
from airflow_bettertoken.protocol.spend import RunSpend
from airflow_bettertoken.storage.locations import RESERVED_PREFIX, S3Location
from airflow_bettertoken.storage.records import ConditionalRecord
from airflow_bettertoken.storage.typed_record import TypedRecord

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from airflow_bettertoken.storage.run_manifest import RunManifest

__all__ = [
    "RECENT_RUNS_FOR_RATE",
    "ChainState",
    "RunResult",
    "Window",
    "chain_location",
    "chain_record",
    "chain_root",
    "duration",
    "failed_edit",
    "next_chunk_run_id",
    "progress_line",
    "run_line",
    "with_reservation",
    "with_window_of",
]

_CHUNK_SUFFIX = re.compile(r"__chunk(\d+)$")
#: Runs whose pace gives the chain's rate and ETA.
RECENT_RUNS_FOR_RATE = 5
# Kept of a failure's reason in the chain record; the run manifests keep 500 characters.
_MAX_REASON_CHARS = 200
_FAILURE = TypeAdapter(EditFailure)


def chain_root(run_id: str) -> str:
    """The chain's first run: ``X`` for ``X``, ``X__chunk2``, ``X__chunk3``..."""
    match = _CHUNK_SUFFIX.search(run_id)
    return run_id if match is None else run_id[: match.start()]


def next_chunk_run_id(run_id: str) -> str:
    """``manual__X`` is followed by ``manual__X__chunk2``, then ``manual__X__chunk3``, and so on."""
    match = _CHUNK_SUFFIX.search(run_id)
    if match is None:
        return f"{run_id}__chunk2"
    return f"{run_id[: match.start()]}__chunk{int(match.group(1)) + 1}"


def chain_location(bucket: str, dag_id: str, run_id: str) -> S3Location:
    """Where the chain of ``run_id`` keeps its record."""
    root = re.sub(r"[^A-Za-z0-9._-]+", "_", chain_root(run_id))
    return S3Location(bucket, f"{RESERVED_PREFIX}chains/{dag_id}/{root}.json")


def chain_record(
    s3_hook: S3Hook, bucket: str, dag_id: str, run_id: str, *, extra_args: Mapping[str, Any] | None = None
) -> TypedRecord[ChainState]:
    """The chain's record of ``run_id``, read and updated conditionally (each run of the chain writes it)."""
    location = chain_location(bucket, dag_id, run_id)
    return TypedRecord(ChainState, ConditionalRecord(s3_hook, location, extra_args=extra_args))


@record
class Window:
    """The source keys one run looked at: after ``after``, through ``through``, plus its retried keys."""

    run_id: str
    after: str
    through: str
    retried: tuple[str, ...] = ()


@record
class RunResult:
    """What one run of the chain settled, written by its manifest task (again, if it runs again)."""

    run_id: str
    planned: int
    done: int
    failed: int
    failed_for_good: int
    started_at: float | None
    finished_at: float
    spend: RunSpend = RunSpend()
    #: The currency of ``spend.cost``: the price table's; None when the run priced no call.
    currency: str | None = None

    @property
    def seconds(self) -> float | None:
        return None if self.started_at is None else max(0.0, self.finished_at - self.started_at)


@record
class ChainState(Record):
    """Where a chain of runs stands: what its first run counted, each run's window, and what failed.

    :param images: the source images its first run counted.
    :param done_at_start: of them, those whose output existed already.
    :param failed_may_retry: source keys that failed and may succeed on another try: planned first.
        Records written before it had this name call it ``retry``.
    :param failed_for_good: source keys that failed for good, with why: not planned again unless
        asked. Records written before it had this name call it ``failed``.
    :param max_spend: the chain's cap on its cost, as its last run set it; None without one.
    :param reservations: what each run reserved under the cap, until its manifest settles it.
    :param estimate: the last run's estimate and cap figures (the listing's XCom ``estimate``).
    """

    dag_id: str
    root_run_id: str
    source_uri: str
    dest_uri: str
    images: int = 0
    done_at_start: int = 0
    windows: tuple[Window, ...] = ()
    failed_may_retry: Annotated[
        tuple[str, ...], Field(validation_alias=AliasChoices("failed_may_retry", "retry"))
    ] = ()
    failed_for_good: Annotated[
        dict[str, EditFailure], Field(validation_alias=AliasChoices("failed_for_good", "failed"))
    ] = Field(default_factory=dict)
    runs: tuple[RunResult, ...] = ()
    max_spend: Decimal | None = None
    reservations: dict[str, Decimal] = Field(default_factory=dict)
    estimate: SpendPlan | None = None

    @field_validator("failed_for_good", mode="after")
    @classmethod
    def _all_for_good(cls, failures: dict[str, EditFailure]) -> dict[str, EditFailure]:
        # Records written before the failures were EditFailure records do not say so: they all are.
        return {
            key: failure if failure.for_good else dataclasses.replace(failure, for_good=True)
            for key, failure in failures.items()
        }

    @field_serializer("failed_for_good")
    def _compact(self, failures: dict[str, EditFailure]) -> dict[str, dict[str, Any]]:
        # A whole catalog's failures: each keeps only the fields it has (no source, dest or connection).
        return {
            key: _FAILURE.dump_python(failure, mode="json", exclude_none=True)
            for key, failure in failures.items()
        }

    @property
    def watermark(self) -> str:
        """The last source key any run of the chain settled; later runs list after it."""
        return max((window.through for window in self.windows), default="")

    @property
    def done(self) -> int:
        return self.done_at_start + sum(run.done for run in self.runs)

    @property
    def pending(self) -> int:
        """Images neither done nor failed for good: still to plan, or to try again."""
        return max(0, self.images - self.done - len(self.failed_for_good))

    @property
    def spend(self) -> RunSpend:
        return sum((run.spend for run in self.runs), RunSpend())

    def under_cap(self, run_id: str) -> tuple[Decimal, Decimal]:
        """What the chain's other runs spent (settled) and reserved (not settled yet), for ``run_id``'s
        planning: the run's own earlier calls are in its tally (``storage/run_budget.py``)."""
        spent = sum((run.spend.cost for run in self.runs if run.run_id != run_id), Decimal(0))
        reserved = sum((amount for run, amount in self.reservations.items() if run != run_id), Decimal(0))
        return spent, reserved

    @property
    def currency(self) -> str | None:
        """The currency of the chain's costs: its latest priced run's."""
        return next((run.currency for run in reversed(self.runs) if run.currency), None)

    def window(self, run_id: str) -> Window | None:
        return next((w for w in self.windows if w.run_id == run_id), None)

    def with_window(self, window: Window) -> ChainState:
        others = tuple(w for w in self.windows if w.run_id != window.run_id)
        return dataclasses.replace(self, windows=(*others, window))

    def images_per_hour(self) -> float | None:
        """The chain's pace over its recent runs, from their done edits and their wall time."""
        recent = [run for run in self.runs if run.seconds][-RECENT_RUNS_FOR_RATE:]
        seconds = sum(run.seconds or 0.0 for run in recent)
        done = sum(run.done for run in recent)
        return done / seconds * 3600 if seconds > 0 and done > 0 else None

    def eta_seconds(self) -> float | None:
        rate = self.images_per_hour()
        return None if rate is None else self.pending / rate * 3600

    def after_run(
        self,
        result: RunResult,
        *,
        done: Iterable[str],
        failed_for_good: Mapping[str, EditFailure],
        failed_may_retry: Iterable[str],
    ) -> ChainState:
        """The chain once a run's manifest settled its edits (by source key); a run settled again
        (its manifest task ran again) replaces what it settled before."""
        settled = set(done) | set(failed_for_good)
        may_retry = [key for key in failed_may_retry if key not in settled]
        retry = [key for key in self.failed_may_retry if key not in settled and key not in may_retry]
        failed = {**self.failed_for_good, **failed_for_good}
        for key in done:
            failed.pop(key, None)  # a forced retry that worked
        runs = tuple(run for run in self.runs if run.run_id != result.run_id)
        return dataclasses.replace(
            self,
            failed_may_retry=(*retry, *may_retry),
            failed_for_good=failed,
            runs=(*runs, result),
        )

    def settle_run(
        self, manifest: RunManifest, *, source_key_of: Mapping[str, str], **result: Any
    ) -> ChainState:
        """The chain once the run of ``manifest`` settled its planned edits: done, failed for good (with
        why), or to try again first.

        :param source_key_of: each planned edit's source key, by its ``dest``.
        :param result: the :class:`RunResult` fields the manifest does not hold (``started_at``, ...).
        """
        written = {output.output_uri for output in manifest.outputs}
        failures = {failure.dest: failure for failure in manifest.failures}
        done, for_good, may_retry = [], {}, []
        for dest, key in source_key_of.items():
            failure = failures.get(dest)
            if dest in written:
                done.append(key)
            elif failure is not None and failure.for_good and not is_blocked_by_budget(failure):
                for_good[key] = failed_edit(failure, manifest.run_id)
            else:
                may_retry.append(key)
        run = RunResult(
            run_id=manifest.run_id,
            planned=len(source_key_of),
            done=len(done),
            failed=len(for_good) + len(may_retry),
            failed_for_good=len(for_good),
            spend=manifest.spend,
            currency=manifest.currency,
            **result,
        )
        settled = self.after_run(run, done=done, failed_for_good=for_good, failed_may_retry=may_retry)
        # Its cost is in its result now: the run's reservation is released.
        reservations = {r: amount for r, amount in self.reservations.items() if r != manifest.run_id}
        return dataclasses.replace(settled, reservations=reservations)


def with_window_of(current: ChainState | None, planned: ChainState, run_id: str) -> ChainState:
    """The chain's record once the run ``run_id`` wrote in the window it planned (``planned``, from the
    record as it read it): only that window is new, the rest stays as the chain's other runs left it.
    A record of another catalog (or none) is replaced by ``planned``."""
    window = planned.window(run_id)
    if current is None or window is None or current.source_uri != planned.source_uri:
        return planned
    return current.with_window(window)


def with_reservation(chain: ChainState, run_id: str, plan: SpendPlan) -> ChainState:
    """The chain once the run ``run_id`` reserved what it plans to spend under the cap (none without a
    cap), with its estimate. Made again on every fresher record, it still fits or it fails.

    :raises BetterTokenRecordConflictError: when other runs reserved or spent so much meanwhile that the
        reservation no longer fits: the listing's retry plans again from the fresh record.
    """
    spent, reserved = chain.under_cap(run_id)
    changed = (spent, reserved) != (plan.spent, plan.reserved_by_others)
    over = plan.max_spend is not None and spent + reserved + (plan.reservation or 0) > plan.max_spend
    if plan.reservation is not None and changed and over:
        raise BetterTokenRecordConflictError(
            f"the chain of run {run_id} spent or reserved more while it planned; planning again"
        )
    reservations = {r: amount for r, amount in chain.reservations.items() if r != run_id}
    if plan.reservation is not None:
        reservations[run_id] = plan.reservation
    max_spend = plan.max_spend if plan.max_spend is not None else chain.max_spend
    return dataclasses.replace(chain, reservations=reservations, max_spend=max_spend, estimate=plan)


def progress_line(plan: Any, chain: ChainState | None, source_uri: str) -> str:
    """One log line on where the catalog stands, what this run plans, and when it should end."""
    counts = plan.counts
    if chain is None:
        return (
            f"Images under {source_uri}: {counts.images:,}, {counts.done:,} done, {counts.pending:,} "
            f"pending, {counts.planned:,} planned, {counts.remaining:,} remaining"
        )
    failed = len(chain.failed_for_good)
    share = f" ({failed / chain.images:.1%})" if chain.images else ""
    line = (
        f"Catalog {chain.source_uri} -> {chain.dest_uri}: {chain.done:,} of {chain.images:,} done, "
        f"{failed:,} failed for good{share}, {counts.remaining:,} remaining after this run, "
        f"which plans {counts.planned:,}"
    )
    rate, eta = chain.images_per_hour(), chain.eta_seconds()
    if rate is None or eta is None:
        return f"{line}; no finished run yet to give a pace"
    return f"{line}; about {duration(eta)} left at {rate:,.0f} images an hour over the recent runs"


def run_line(manifest: RunManifest, chain: ChainState | None) -> str:
    """One log line on what a run did, what it spent, and where its catalog stands now."""
    counts, spend = manifest.counts, manifest.spend
    for_good = sum(1 for failure in manifest.failures if failure.for_good)
    line = (
        f"Run {manifest.run_id}: {counts.planned} planned, {counts.done} done, {counts.skipped} found "
        f"done already, {counts.failed} failed ({for_good} for good); spend: {spend.posts} POSTs, "
        f"{spend.paid} paid, {spend.maybe_billed} maybe billed, {spend.billed_without_image} "
        "billed without an image"
    )
    if chain is None:
        return line
    return f"{line}; the catalog: {chain.done:,} of {chain.images:,} done, {chain.pending:,} to go"


def duration(seconds: float) -> str:
    """A time left, in the unit a person reads it in."""
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


def failed_edit(failure: EditFailure, run_id: str) -> EditFailure:
    """A failure for good as the chain keeps it, by source key: its error, its reason cut short, its run."""
    return EditFailure(
        error=failure.error,
        reason=first_line(failure.reason, _MAX_REASON_CHARS),
        for_good=True,
        run_id=run_id,
        evidence_uri=failure.evidence_uri,
    )
