"""The review gate's S3 side: the run's decisions record, its staged images, and publishing by copy.

Beside the outputs, in the destination bucket::

    _bettertoken/reviews/<dag id>/<run id>.json     the run's review (protocol/review.py), one per run
    _bettertoken/staging/<dag id>/<run id>/...      the run's edits until a person approves them

The record changes only by conditional writes (:class:`ConditionalRecord`), so two reviewers who submit
at once both keep their decisions. A staged image counts only when its S3 metadata names this run as
its maker (XCom, which users can edit, never names what is published). Publishing is a server-side
``CopyObject``, create-only, that keeps the image's metadata and carries the ``s3_extra_args``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_bettertoken.protocol.review import ItemState, ReviewItem, ReviewRecord
from airflow_bettertoken.storage.locations import RESERVED_PREFIX, S3Location
from airflow_bettertoken.storage.records import ConditionalRecord
from airflow_bettertoken.storage.s3_io import S3IO

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

__all__ = ["ReviewStore", "review_location", "staging_prefix"]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text)


def review_location(bucket: str, dag_id: str, run_id: str) -> S3Location:
    """Where a run's review record is kept."""
    return S3Location(bucket, f"{RESERVED_PREFIX}reviews/{_safe(dag_id)}/{_safe(run_id)}.json")


def staging_prefix(bucket: str, dag_id: str, run_id: str) -> str:
    """Where a run's edits are staged until they are approved, as an ``s3://`` prefix."""
    return f"s3://{bucket}/{RESERVED_PREFIX}staging/{_safe(dag_id)}/{_safe(run_id)}/"


def _sources(metadata: Mapping[str, str]) -> tuple[str, ...]:
    try:
        found = json.loads(metadata.get("sources") or "[]")
    except ValueError:
        return ()
    return tuple(found) if isinstance(found, list) and all(isinstance(u, str) for u in found) else ()


class ReviewStore:
    """One run's review in S3, through ``S3IO`` (and so with the ``s3_extra_args``)."""

    def __init__(
        self, s3_hook: S3Hook, location: S3Location, *, extra_args: Mapping[str, Any] | None = None
    ) -> None:
        self.location = location
        self.io = S3IO(s3_hook, extra_args)
        self.record = ConditionalRecord(s3_hook, location, extra_args=extra_args)

    def use_extra_args(self, extra_args: Mapping[str, Any] | None) -> None:
        """Write with the gate's ``s3_extra_args`` (from the record) from now on; keeps what was read."""
        self.io = S3IO(self.io.s3_hook, extra_args)
        self.record.io = self.io

    def read(self) -> ReviewRecord | None:
        found = self.record.read()
        return ReviewRecord.from_json(found) if found else None

    def update(self, change: Callable[[ReviewRecord | None], ReviewRecord | None]) -> ReviewRecord | None:
        """Apply a pure change with conditional writes; it may run again on a fresher record."""

        def on_json(current: dict[str, Any] | None) -> dict[str, Any] | None:
            changed = change(ReviewRecord.from_json(current) if current else None)
            return changed.to_json() if changed is not None else None

        written = self.record.update(on_json)
        return ReviewRecord.from_json(written) if written else None

    def staged(self, prefix: S3Location, dag_id: str, run_id: str) -> list[ReviewItem]:
        """The images under this run's staging prefix that this run's edits wrote: one LIST, a HEAD each.

        An object whose metadata names another run (or none) is left out: it was not made here.
        """
        items = []
        for key in self.io.list_keys(prefix):
            if not key.endswith(".png"):
                continue
            head = self.io.head(S3Location(prefix.bucket, key))
            metadata = head.metadata if head.found else {}
            if (metadata.get("dag-id"), metadata.get("run-id")) != (dag_id, run_id):
                continue
            items.append(
                ReviewItem(
                    key=key,
                    round=0,
                    state=ItemState.PENDING,
                    sources=_sources(metadata),
                    size=metadata.get("requested-size"),
                    task=f"{metadata.get('task-id')}[{metadata.get('map-index')}]",
                )
            )
        return items

    def publish(self, staged: S3Location, published: S3Location) -> bool:
        """Copy an approved image under the publish prefix, create-only; False when it was there already."""
        return self.io.copy(staged, published, if_none_match=True).written
