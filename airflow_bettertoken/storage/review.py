"""The review gate's S3 side: the run's decisions record, its staged images, and publishing by copy.

Beside the outputs, in the destination bucket::

    _bettertoken/reviews/<dag id>/<run id>.json             the run's review (protocol/review.py)
    _bettertoken/staging/<dag id>/<run id>/round-1/...      the run's edits until a person approves them
    _bettertoken/staging/<dag id>/<run id>/round-2/...      the re-edits asked for in round 1, and so on

Each round has its own prefix (:func:`staging_prefix`, which the DAG, the gate and the record all
use), so a re-edit's key never meets another image's, whatever the images are called.

The record changes only by conditional writes (:class:`ConditionalRecord`), so two reviewers who submit
at once both keep their decisions. A staged image counts only when its S3 metadata names this run as
its maker (XCom, which users can edit, never names what is published). Publishing is a server-side
``CopyObject``, create-only, that keeps the image's metadata and carries the ``s3_extra_args``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
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


def staging_prefix(bucket: str, dag_id: str, run_id: str, review_round: int = 1) -> str:
    """Where a run's edits of one review round are staged until approved, as an ``s3://`` prefix.

    Round 1 is what the listing stages (its ``stage_prefix``) and what the gate reviews first
    (its ``staging_prefix``); round 2 holds the re-edits asked for in round 1, and so on. Usable in a
    template through ``user_defined_macros``::

        DAG(..., user_defined_macros={"staging_prefix": staging_prefix})
        stage_prefix="{{ staging_prefix(params.out_bucket, dag.dag_id, run_id) }}"

    :param review_round: the round, from 1.
    """
    if int(review_round) < 1:
        raise ValueError(f"review_round={review_round!r} must be 1 or more")
    return (
        f"s3://{bucket}/{RESERVED_PREFIX}staging/{_safe(dag_id)}/{_safe(run_id)}/round-{int(review_round)}/"
    )


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

    def _load(self, document: dict[str, Any] | None) -> ReviewRecord | None:
        return ReviewRecord.load(document, self.location.uri) if document is not None else None

    def read(self) -> ReviewRecord | None:
        """The run's record, or None before its gate first ran.

        :raises BetterTokenRecordError: naming the object and what is wrong, when it does not load.
        """
        return self._load(self.record.read())

    def update(self, change: Callable[[ReviewRecord | None], ReviewRecord | None]) -> ReviewRecord | None:
        """Apply a pure change with conditional writes; it may run again on a fresher record."""

        def on_json(current: dict[str, Any] | None) -> dict[str, Any] | None:
            changed = change(self._load(current))
            return changed.dump() if changed is not None else None

        return self._load(self.record.update(on_json))

    def staged(self, prefix: S3Location, dag_id: str, run_id: str) -> list[ReviewItem]:
        """The images under a round's staging prefix that this run's edits wrote: one LIST, a HEAD each.

        Each is named by its path under ``prefix``. An object whose metadata names another run (or
        none) is left out: it was not made here.
        """
        keys = (key for key in self.io.list_keys(prefix) if key.endswith(".png"))
        return self._made_here(((key, key[len(prefix.key) :]) for key in keys), prefix.bucket, dag_id, run_id)

    def reedits_made(self, record: ReviewRecord, review_round: int) -> list[ReviewItem]:
        """The re-edits of ``review_round`` that this run's edits wrote, at the keys the record gave them."""
        wanted = ((item.key, item.name) for item in record.reedits(review_round))
        return self._made_here(wanted, record.bucket, record.dag_id, record.run_id)

    def _made_here(
        self, keys: Iterable[tuple[str, str]], bucket: str, dag_id: str, run_id: str
    ) -> list[ReviewItem]:
        items = []
        for key, name in keys:
            head = self.io.head(S3Location(bucket, key))
            metadata = head.metadata if head.found else {}
            if (metadata.get("dag-id"), metadata.get("run-id")) != (dag_id, run_id):
                continue
            items.append(
                ReviewItem(
                    key=key,
                    name=name,
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
