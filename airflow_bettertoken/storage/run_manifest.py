"""Run manifests: what each mapped edit run did, kept one object per run, and a summary of them all.

Next to the outputs::

    _manifest.json                 the summary: every run's edits, spend and usage, summed
    _manifests/<run id>.json       one run: its counts, spend, failures (with reasons) and outputs

A run never overwrites another run's manifest. The summary keeps running totals: each run adds
its own figures with one conditional write, so the 2,000th run costs what the first did. A run
written again (a cleared manifest task) takes its earlier figures out first.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from airflow_bettertoken.protocol.record import Record, Sums, record
from airflow_bettertoken.protocol.result import EditFailure, EditXCom, OutputReport
from airflow_bettertoken.protocol.review import ReviewRecord
from airflow_bettertoken.protocol.spend import RunSpend
from airflow_bettertoken.storage.findings import ListingFindings
from airflow_bettertoken.storage.listing import ListingCounts
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.records import ConditionalRecord
from airflow_bettertoken.storage.typed_record import TypedRecord

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

__all__ = [
    "RunManifest",
    "Summary",
    "build_run_manifest",
    "fold_into_summary",
    "review_manifest",
    "run_manifest_key",
    "write_manifests",
]

RUNS_FOLDER = "_manifests/"
# Runs whose figures the summary keeps one by one, for the latest run and throughput over recent runs.
RECENT_RUNS = 20
# A failure the edit task left no record of (it died, or was never run).
_NO_RECORD = "the task left no record"


@record
class RunCounts:
    """A run's edits: planned, done (paid for and written), skipped (found done already), failed."""

    planned: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0


@record
class SizeMismatch:
    """An output whose size is not the one requested."""

    output_uri: str
    requested_size: str | None
    width: int
    height: int


@record
class ManifestOutput(OutputReport):
    """An output the run made or found done, as its edit task reported it."""

    skipped: bool


@record
class ReviewedImage:
    """One image of a run's review, and its history of decisions (the review record's own JSON)."""

    key: str
    round: int
    state: str
    published_uri: str | None
    reedit_of: str | None
    prompt: str | None
    history: list[dict[str, Any]]


@record
class ReviewSection:
    """A run's review in its manifest: the counts, how each round closed, every image's history."""

    counts: dict[str, int]
    rounds: list[dict[str, Any]]
    images: list[ReviewedImage]


@record
class RunManifest(Record):
    """What one run did: ``_manifests/<run id>.json``, written by its manifest task.

    :param listing: the listing's ``counts`` XCom (``images``, ``done``, ``pending``, ...), if known.
    :param remaining: images the listing left for later runs.
    :param next_run_id: the run that continues this one, when the work goes on in chunks.
    :param spend: what the run spent, from the spend ledgers of its outputs (never from XCom).
    :param currency: the currency of ``spend.cost`` (the price table's); None when no call was priced,
        and then the run's spend is in calls and tokens only.
    :param usage: the API's token counts, summed over the run's paid images.
    :param findings: what the listing found besides its edits; None when it pushed none.
    """

    dag_id: str
    run_id: str
    finished_at: str
    counts: RunCounts
    listing: ListingCounts | None = None
    remaining: int | None = None
    next_run_id: str | None = None
    spend: RunSpend = RunSpend()
    currency: str | None = None
    usage: dict[str, int] = Field(default_factory=dict)
    size_mismatches: list[SizeMismatch] = Field(default_factory=list)
    failures: list[EditFailure] = Field(default_factory=list)
    outputs: list[ManifestOutput] = Field(default_factory=list)
    findings: ListingFindings | None = None
    review: ReviewSection | None = None


@record
class ReviewTotals(Sums):
    """Review decisions summed over runs."""

    approved: int = 0
    rejected: int = 0
    reedited: int = 0
    published: int = 0


@record
class Contribution:
    """What one run adds to the summary's totals; kept with the run, to take it out if it is written again."""

    images_done: int = 0
    spend: RunSpend = RunSpend()
    usage: dict[str, int] = Field(default_factory=dict)
    review: ReviewTotals = ReviewTotals()


@record
class RunBrief:
    """A run as the summary names it."""

    run_id: str
    finished_at: str | None = None
    counts: RunCounts = RunCounts()
    remaining: int | None = None
    next_run_id: str | None = None
    #: Not known to the manifest task; kept for the summary's readers.
    started_at: str | None = None


@record
class RecentRun(RunBrief):
    """One of the recent runs the summary keeps, with what it added."""

    counted: Contribution = Contribution()


@record
class Summary(Record):
    """Every run's edits, spend and usage, summed: ``_manifest.json``, a running total that each run
    adds itself to with one conditional write. Format 1 summaries were rebuilt from every manifest.

    ``currency`` is that of ``spend.cost``: the latest priced run's. ``mixed_currencies`` says that runs
    were priced in different currencies (the price table changed currency), so the sum means little.
    """

    FORMAT = 2

    runs: int = 0
    images_done: int = 0
    spend: RunSpend = RunSpend()
    currency: str | None = None
    mixed_currencies: bool = False
    usage: dict[str, int] = Field(default_factory=dict)
    review: ReviewTotals = ReviewTotals()
    latest_run: RunBrief | None = None
    last_failures: list[EditFailure] = Field(default_factory=list)
    recent_runs: list[RecentRun] = Field(default_factory=list)


def _add_usage(into: dict[str, int], usage: Mapping[str, Any] | None, sign: int = 1) -> None:
    """Sum the whole-number token counts (nested details are left out)."""
    for name, value in (usage or {}).items():
        if isinstance(value, int) and not isinstance(value, bool):
            into[name] = into.get(name, 0) + sign * value


def build_run_manifest(
    edits: Iterable[Mapping[str, str]],
    results: Iterable[EditXCom],
    failures: Iterable[EditFailure] = (),
    *,
    dag_id: str,
    run_id: str,
    finished_at: str,
    listing: ListingCounts | None = None,
    next_run_id: str | None = None,
    spend: RunSpend | None = None,
    currency: str | None = None,
    findings: ListingFindings | None = None,
    review: ReviewSection | None = None,
) -> RunManifest:
    """Reduce one run's planned edits and its edit tasks' XCom into its manifest.

    :param edits: the planned ``{"source", "dest"}`` pairs, as the listing returned them.
    :param results: the edit tasks' return values; a planned edit without one counts as failed.
    :param failures: the failed edit tasks' ``failure`` XCom, which says why.
    :param listing: the listing's counts (``images``, ``done``, ``pending``, ``remaining``), if known.
    :param next_run_id: the run that continues this one, when the work goes on in chunks.
    :param spend: what the run spent, from the spend ledgers of its outputs (never from XCom).
    :param currency: the currency of the spend's cost; None when no call was priced.
    :param findings: the listing's findings: the keys it skipped and what the preflight found about the
        store; None when the listing pushed none.
    """
    planned = list(edits)
    finished = list(results)
    written = {r.output_uri for r in finished}
    reasons = {f.dest: f for f in failures}
    usage: dict[str, int] = {}
    for result in finished:
        _add_usage(usage, result.usage)
    skipped = sum(1 for r in finished if r.skipped)
    failed = [e for e in planned if e["dest"] not in written]
    return RunManifest(
        dag_id=dag_id,
        run_id=run_id,
        finished_at=finished_at,
        counts=RunCounts(
            planned=len(planned), done=len(finished) - skipped, skipped=skipped, failed=len(failed)
        ),
        listing=listing,
        remaining=listing.remaining if listing else None,
        next_run_id=next_run_id,
        spend=spend or RunSpend(),
        currency=currency,
        usage=usage,
        size_mismatches=[
            SizeMismatch(r.output_uri, r.requested_size, r.width, r.height)
            for r in finished
            if r.size_matches is False
        ],
        failures=[
            reasons.get(e["dest"])
            or EditFailure(source=e["source"], dest=e["dest"], error=None, reason=_NO_RECORD)
            for e in failed
        ],
        outputs=[
            ManifestOutput(r.output_uri, r.width, r.height, r.requested_size, r.nbytes, r.sha256, r.skipped)
            for r in sorted(finished, key=lambda r: r.output_uri)
        ],
        findings=findings,
        review=review,
    )


def review_manifest(review: ReviewRecord) -> ReviewSection:
    """A run's review for its manifest: the counts, how each round closed, and every image's history."""
    return ReviewSection(
        counts=review.counts(),
        rounds=[close.model_dump(mode="json") for close in review.rounds],
        images=[
            ReviewedImage(
                key=item.key,
                round=item.round,
                state=item.state.value,
                published_uri=item.published_uri,
                reedit_of=item.reedit_of,
                prompt=item.prompt,
                history=[decision.model_dump(mode="json") for decision in item.history],
            )
            for item in sorted(review.items.values(), key=lambda i: i.key)
        ],
    )


def _contribution(run: RunManifest) -> Contribution:
    """What one run adds to the summary's totals."""
    counts = run.review.counts if run.review else {}
    return Contribution(
        images_done=run.counts.done,
        spend=run.spend,
        usage=dict(run.usage),
        review=ReviewTotals(**{f.name: counts.get(f.name, 0) for f in dataclasses.fields(ReviewTotals)}),
    )


def fold_into_summary(summary: Summary | None, run: RunManifest, previous: RunManifest | None) -> Summary:
    """The summary with ``run`` counted once: a run counted before (``previous``, its earlier manifest,
    or its entry among the recent runs) is taken out first. Pure, so a conditional write can redo it."""
    summary = summary or Summary()
    recent = [r for r in summary.recent_runs if r.run_id != run.run_id]
    counted = next((r.counted for r in summary.recent_runs if r.run_id == run.run_id), None)
    if counted is None and previous is not None:
        counted = _contribution(previous)
    taken = counted or Contribution()
    added = _contribution(run)
    usage = dict(summary.usage)
    _add_usage(usage, added.usage)
    _add_usage(usage, taken.usage, sign=-1)
    brief = RecentRun(
        run_id=run.run_id,
        finished_at=run.finished_at,
        counts=run.counts,
        remaining=run.remaining,
        next_run_id=run.next_run_id,
        counted=added,
    )
    recent = sorted([*recent, brief], key=lambda r: r.finished_at or "")
    latest = recent[-1]
    currencies = {summary.currency, run.currency} - {None}
    mixed = summary.mixed_currencies or len(currencies) > 1
    return Summary(
        runs=summary.runs + (counted is None),
        images_done=summary.images_done + added.images_done - taken.images_done,
        spend=summary.spend + added.spend - taken.spend,
        currency=run.currency or summary.currency,
        mixed_currencies=mixed,
        usage=usage,
        review=summary.review + added.review - taken.review,
        latest_run=RunBrief(**{f.name: getattr(latest, f.name) for f in dataclasses.fields(RunBrief)}),
        last_failures=run.failures if latest.run_id == run.run_id else summary.last_failures,
        recent_runs=recent[-RECENT_RUNS:],
    )


def run_manifest_key(summary: S3Location, run_id: str) -> S3Location:
    """Where a run's manifest goes: ``_manifests/<run id>.json`` beside the summary."""
    folder = summary.key.rsplit("/", 1)[0] + "/" if "/" in summary.key else ""
    return S3Location(summary.bucket, f"{folder}{RUNS_FOLDER}{re.sub(r'[^A-Za-z0-9._-]+', '_', run_id)}.json")


def write_manifests(
    s3_hook: S3Hook,
    summary: S3Location,
    run_manifest: RunManifest,
    *,
    extra_args: Mapping[str, Any] | None = None,
) -> str:
    """Write this run's manifest and add it to the summary: four requests, however many runs came
    before. Returns the run manifest's URI."""
    location = run_manifest_key(summary, run_manifest.run_id)
    run_record = TypedRecord(RunManifest, ConditionalRecord(s3_hook, location, extra_args=extra_args))
    previous = run_record.read()
    run_record.update(lambda _: run_manifest)
    TypedRecord(Summary, ConditionalRecord(s3_hook, summary, extra_args=extra_args)).update(
        lambda current: fold_into_summary(current, run_manifest, previous)
    )
    return location.uri
