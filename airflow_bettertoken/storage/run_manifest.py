"""Run manifests: what each mapped edit run did, kept one object per run, and a summary of them all.

Next to the outputs::

    _manifest.json                 the summary: every run's edits, spend and usage, summed
    _manifests/<run id>.json       one run: its counts, spend, failures (with reasons) and outputs

A run never overwrites another run's manifest. The summary keeps running totals: each run adds
its own figures with one conditional write, so the 2,000th run costs what the first did. A run
written again (a cleared manifest task) takes its earlier figures out first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_bettertoken.protocol.result import EditFailure, EditXCom
from airflow_bettertoken.protocol.review import ReviewRecord
from airflow_bettertoken.protocol.spend import RunSpend
from airflow_bettertoken.storage.findings import ListingFindings
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.records import ConditionalRecord

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

__all__ = [
    "build_run_manifest",
    "fold_into_summary",
    "review_manifest",
    "run_manifest_key",
    "write_manifests",
]

#: The review counts the summary sums over runs.
REVIEW_COUNTS = ("approved", "rejected", "reedited", "published")

RUNS_FOLDER = "_manifests/"


def _sum_usage(into: dict[str, int], usage: Mapping[str, Any] | None) -> None:
    for name, value in (usage or {}).items():
        if isinstance(value, int) and not isinstance(value, bool):
            into[name] = into.get(name, 0) + value


def build_run_manifest(
    edits: Iterable[Mapping[str, str]],
    results: Iterable[Mapping[str, Any] | None],
    failures: Iterable[Mapping[str, Any] | None] = (),
    *,
    listing: Mapping[str, int] | None = None,
    next_run_id: str | None = None,
    spend: RunSpend | None = None,
    findings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Reduce one run's planned edits and its edit tasks' XCom into a JSON-safe manifest.

    :param edits: the planned ``{"source", "dest"}`` pairs, as the listing returned them.
    :param results: the edit tasks' return values; a failed task has none, so it counts as failed.
    :param failures: the failed edit tasks' ``failure`` XCom (:class:`EditFailure`).
    :param listing: the listing's counts (``images``, ``done``, ``pending``, ``remaining``), if known.
    :param next_run_id: the run that continues this one, when the work goes on in chunks.
    :param spend: what the run spent, from the spend ledgers of its outputs (never from XCom).
    :param findings: the listing's ``findings`` XCom (:class:`ListingFindings`): the keys it skipped and
        what the preflight found about the store; None when the listing pushed none.
    """
    planned = list(edits)
    finished = [r for r in map(EditXCom.from_xcom, results) if r]
    written = {r.output_uri for r in finished}
    reasons = {f.dest: f for f in map(EditFailure.from_xcom, failures) if f}
    usage: dict[str, int] = {}
    for result in finished:
        _sum_usage(usage, result.usage)
    failed = [e for e in planned if e["dest"] not in written]
    skipped = sum(1 for r in finished if r.skipped)
    return {
        "counts": {
            "planned": len(planned),
            "done": len(finished) - skipped,
            "skipped": skipped,
            "failed": len(failed),
        },
        "listing": dict(listing) if listing else None,
        "remaining": listing.get("remaining") if listing else None,
        "next_run_id": next_run_id,
        "spend": (spend or RunSpend()).to_json(),
        "usage": usage,
        "size_mismatches": [
            {
                "output_uri": r.output_uri,
                "requested_size": r.requested_size,
                "width": r.width,
                "height": r.height,
            }
            for r in finished
            if r.size_matches is False
        ],
        "failures": [
            _failure_entry(reasons.get(e["dest"]))
            or {
                "source": e["source"],
                "dest": e["dest"],
                "error": None,
                "reason": "the task left no record",
                "for_good": False,
            }
            for e in failed
        ],
        "outputs": [
            {
                "output_uri": r.output_uri,
                "width": r.width,
                "height": r.height,
                "requested_size": r.requested_size,
                "bytes": r.nbytes,
                "sha256": r.sha256,
                "skipped": r.skipped,
            }
            for r in sorted(finished, key=lambda r: r.output_uri)
        ],
        "findings": ListingFindings.from_xcom(findings).to_xcom() if findings is not None else None,
    }


def review_manifest(review: ReviewRecord) -> dict[str, Any]:
    """A run's review for its manifest: the counts, how each round closed, and every image's history."""
    return {
        "counts": review.counts(),
        "rounds": [close.model_dump(mode="json") for close in review.rounds],
        "images": [
            {
                "key": item.key,
                "round": item.round,
                "state": item.state.value,
                "published_uri": item.published_uri,
                "reedit_of": item.reedit_of,
                "prompt": item.prompt,
                "history": [decision.model_dump(mode="json") for decision in item.history],
            }
            for item in sorted(review.items.values(), key=lambda i: i.key)
        ],
    }


def _failure_entry(failure: EditFailure | None) -> dict[str, Any] | None:
    if failure is None:
        return None
    return {
        "source": failure.source,
        "dest": failure.dest,
        "error": failure.error,
        "reason": failure.reason,
        "for_good": failure.for_good,
    }


# Runs whose figures the summary keeps one by one, for the latest run and throughput over recent runs.
RECENT_RUNS = 20


def _contribution(run: Mapping[str, Any]) -> dict[str, Any]:
    """What one run adds to the summary's totals."""
    review = (run.get("review") or {}).get("counts") or {}
    return {
        "images_done": run["counts"]["done"],
        "spend": RunSpend.from_json(run.get("spend")).to_json(),
        "usage": dict(run.get("usage") or {}),
        "review": {name: int(review.get(name, 0)) for name in REVIEW_COUNTS},
    }


def fold_into_summary(
    summary: Mapping[str, Any] | None, run: Mapping[str, Any], previous: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The summary with ``run`` counted once: a run counted before (``previous``, its earlier manifest,
    or its entry among the recent runs) is taken out first. Pure, so a conditional write can redo it."""
    summary = summary or {}
    recent = [r for r in summary.get("recent_runs", []) if r["run_id"] != run["run_id"]]
    counted = next(
        (r["counted"] for r in summary.get("recent_runs", []) if r["run_id"] == run["run_id"]), None
    )
    if counted is None and previous is not None:
        counted = _contribution(previous)
    added = _contribution(run)
    usage = dict(summary.get("usage") or {})
    _sum_usage(usage, added["usage"])
    for name, value in ((counted or {}).get("usage") or {}).items():
        usage[name] = usage.get(name, 0) - value
    spend = RunSpend.from_json(summary.get("spend")) + RunSpend.from_json(added["spend"])
    spend -= RunSpend.from_json((counted or {}).get("spend"))
    review = dict(summary.get("review") or {})
    for name in REVIEW_COUNTS:
        taken = ((counted or {}).get("review") or {}).get(name, 0)
        review[name] = review.get(name, 0) + added["review"][name] - taken
    brief = {
        key: run.get(key)
        for key in ("run_id", "started_at", "finished_at", "counts", "remaining", "next_run_id")
    }
    recent = sorted([*recent, {**brief, "counted": added}], key=lambda r: r.get("finished_at") or "")
    latest = recent[-1]
    return {
        "format": 2,
        "runs": summary.get("runs", 0) + (counted is None),
        "images_done": summary.get("images_done", 0)
        + added["images_done"]
        - (counted or {}).get("images_done", 0),
        "spend": spend.to_json(),
        "usage": usage,
        "review": review,
        "latest_run": {k: v for k, v in latest.items() if k != "counted"},
        "last_failures": run.get("failures", [])
        if latest["run_id"] == run["run_id"]
        else summary.get("last_failures", []),
        "recent_runs": recent[-RECENT_RUNS:],
    }


def run_manifest_key(summary: S3Location, run_id: str) -> S3Location:
    """Where a run's manifest goes: ``_manifests/<run id>.json`` beside the summary."""
    folder = summary.key.rsplit("/", 1)[0] + "/" if "/" in summary.key else ""
    return S3Location(summary.bucket, f"{folder}{RUNS_FOLDER}{re.sub(r'[^A-Za-z0-9._-]+', '_', run_id)}.json")


def write_manifests(
    s3_hook: S3Hook,
    summary: S3Location,
    run_manifest: Mapping[str, Any],
    *,
    extra_args: Mapping[str, Any] | None = None,
) -> str:
    """Write this run's manifest and add it to the summary: four requests, however many runs came
    before. Returns the run manifest's URI."""
    location = run_manifest_key(summary, run_manifest["run_id"])
    run_record = ConditionalRecord(s3_hook, location, extra_args=extra_args)
    previous = run_record.read()
    run_record.update(lambda _: dict(run_manifest))
    ConditionalRecord(s3_hook, summary, extra_args=extra_args).update(
        lambda current: fold_into_summary(current, run_manifest, previous)
    )
    return location.uri
