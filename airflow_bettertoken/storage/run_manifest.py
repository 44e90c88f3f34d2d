"""Run manifests: what each mapped edit run did, kept one object per run, and a summary of them all.

Next to the outputs::

    _manifest.json                 the summary: every run's edits, paid calls and usage, summed
    _manifests/<run id>.json       one run: its counts, failures (with reasons) and outputs

A run never overwrites another run's manifest; the summary is rebuilt from all of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_bettertoken.storage.findings import ListingFindings
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.s3_io import S3IO

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

__all__ = ["build_run_manifest", "failure_record", "summarize", "write_manifests"]

RUNS_FOLDER = "_manifests/"
# Kept in a failure record: the first line of the error, cut to this length.
_MAX_REASON_CHARS = 300


def failure_record(source: Any, dest: Any, error: BaseException) -> dict[str, Any]:
    """Why one edit failed, small and JSON-safe: the edit, the error class, a one-line reason."""
    reason = (str(error).strip().splitlines() or [""])[0]
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[:_MAX_REASON_CHARS] + "..."
    return {"source": source, "dest": dest, "error": type(error).__name__, "reason": reason}


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
    findings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Reduce one run's planned edits and its edit tasks' XCom into a JSON-safe manifest.

    :param edits: the planned ``{"source", "dest"}`` pairs, as the listing returned them.
    :param results: the edit tasks' return values; a failed task has none, so it counts as failed.
    :param failures: the failed edit tasks' ``failure`` XCom (:func:`failure_record`).
    :param listing: the listing's counts (``images``, ``done``, ``pending``, ``remaining``), if known.
    :param next_run_id: the run that continues this one, when the work goes on in chunks.
    :param findings: the listing's ``findings`` XCom (:class:`ListingFindings`): the keys it skipped and
        what the preflight found about the store; None when the listing pushed none.
    """
    planned = list(edits)
    finished = [r for r in results if r]
    written = {r["output_uri"] for r in finished}
    reasons = {f["dest"]: f for f in failures if f}
    usage: dict[str, int] = {}
    for result in finished:
        _sum_usage(usage, result.get("usage"))
    failed = [e for e in planned if e["dest"] not in written]
    skipped = sum(1 for r in finished if r["skipped"])
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
        "api_attempts": sum(r["attempts"] for r in finished),
        "usage": usage,
        "size_mismatches": [
            {k: r[k] for k in ("output_uri", "requested_size", "width", "height")}
            for r in finished
            if r["size_matches"] is False
        ],
        "failures": [
            reasons.get(e["dest"])
            or {"source": e["source"], "dest": e["dest"], "error": None, "reason": "the task left no record"}
            for e in failed
        ],
        "outputs": [
            {
                k: r[k]
                for k in ("output_uri", "width", "height", "requested_size", "bytes", "sha256", "skipped")
            }
            for r in sorted(finished, key=lambda r: r["output_uri"])
        ],
        "findings": ListingFindings.from_xcom(findings).to_xcom() if findings is not None else None,
    }


def summarize(runs: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Every run's manifest summed: images done, paid calls, usage; and where the latest run left off."""
    usage: dict[str, int] = {}
    for run in runs:
        _sum_usage(usage, run.get("usage"))
    latest = max(runs, key=lambda run: run.get("finished_at") or "", default={})
    return {
        "runs": len(runs),
        # Every image written was paid for once; api_attempts bounds the paid calls from above.
        "images_done": sum(run["counts"]["done"] for run in runs),
        "api_attempts": sum(run.get("api_attempts", 0) for run in runs),
        "usage": usage,
        "latest_run": {
            key: latest.get(key) for key in ("run_id", "finished_at", "counts", "remaining", "next_run_id")
        },
        "last_failures": latest.get("failures", []),
    }


def _run_key(folder: str, run_id: str) -> str:
    return f"{folder}{RUNS_FOLDER}{re.sub(r'[^A-Za-z0-9._-]+', '_', run_id)}.json"


def write_manifests(
    s3_hook: S3Hook,
    summary: S3Location,
    run_manifest: Mapping[str, Any],
    *,
    s3_extra_args: Mapping[str, Any] | None = None,
) -> str:
    """Write this run's manifest, then rebuild the summary from every run's; returns the run's URI.

    :param s3_extra_args: what every write adds to ``put_object`` (see ``S3ExtraArgs``).
    """
    io = S3IO(s3_hook, s3_extra_args)
    folder = summary.key.rsplit("/", 1)[0] + "/" if "/" in summary.key else ""
    run_key = _run_key(folder, run_manifest["run_id"])
    io.put(S3Location(summary.bucket, run_key), _json_bytes(run_manifest), content_type=JSON)
    keys = s3_hook.list_keys(bucket_name=summary.bucket, prefix=folder + RUNS_FOLDER) or []
    runs = [json.loads(s3_hook.read_key(key, summary.bucket)) for key in keys if key.endswith(".json")]
    io.put(summary, _json_bytes(summarize(runs)), content_type=JSON)
    return f"s3://{summary.bucket}/{run_key}"


JSON = "application/json"


def _json_bytes(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, indent=2).encode()
