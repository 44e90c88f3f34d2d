"""The review gate: a person approves, rejects or re-edits each staged image before it is published.

On Airflow 3.1 and later the gate is a human-in-the-loop task: it shows in Airflow's "Required
actions", links to the run's review page in the gallery, and holds no worker slot while it waits (it
defers to the standard provider's trigger on 3.1 and 3.2, and waits in ``awaiting_input`` with no
trigger from 3.3). Airflow 3.0 has no such tasks: a DAG that uses the gate fails when it is parsed,
with a message naming 3.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.providers.common.compat.sdk import conf

from airflow_bettertoken.exceptions import (
    BetterTokenConfigError,
    BetterTokenInputError,
    fail_task_on_permanent_error,
)
from airflow_bettertoken.operators._hitl import HAS_HITL, HITL_MISSING, HITLBase
from airflow_bettertoken.operators._links import GALLERY_PREFIX
from airflow_bettertoken.operators._s3 import S3Writer
from airflow_bettertoken.operators.next_chunk import is_on
from airflow_bettertoken.protocol.review import UNDECIDED_CHOICES, ItemState, ReviewRecord, RoundClose
from airflow_bettertoken.storage.locations import S3Location, parse_s3_prefix
from airflow_bettertoken.storage.review import ReviewStore, review_location, staging_prefix

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = ["BetterTokenReviewOperator", "review_page_url"]

APPLY = "Apply the decisions"
APPROVE_REST = "Apply, and approve the undecided"
REJECT_REST = "Apply, and reject the undecided"
OPTIONS = [APPLY, APPROVE_REST, REJECT_REST]
COUNTS_KEY = "review"


def review_page_url(dag_id: str, run_id: str) -> str:
    """The run's review page in the gallery, absolute when ``[api] base_url`` is set."""
    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    return f"{base}{GALLERY_PREFIX}/dags/{dag_id}/runs/{quote(run_id, safe='')}/review"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class BetterTokenReviewOperator(S3Writer, HITLBase):
    """Wait for a person to review the run's staged images, then publish the approved ones.

    When it starts, it opens a review round: the images this run's edits wrote under
    ``staging_prefix`` (those whose S3 metadata names this run), or in a later round the re-edits the
    previous round asked for, become pending in the run's review
    record (``_bettertoken/reviews/<dag>/<run>.json``). Reviewers decide on the gallery's review page,
    all images of a page in one submit. The task then waits as a human-in-the-loop task; answering it
    (in Airflow's "Required actions", or ``PATCH .../hitlDetails`` through the REST API) closes the
    round: every pending image takes its latest decision, or ``undecided`` when it has none (also what
    a timeout does). Approved images are copied under ``publish_prefix`` (``CopyObject``, create-only,
    keeping their metadata, with the ``s3_extra_args``), each under its name: its path under
    ``staging_prefix``, and for a re-edit its original's; rejected ones stay staged; re-edits are
    returned for a mapped :class:`BetterTokenImageEditOperator` with ``if_exists="replace"``, each a
    new paid edit with the revised prompt, staged under its round's prefix
    (:func:`~airflow_bettertoken.storage.review.staging_prefix`), which the next round's gate reviews.

    Nothing is written under ``publish_prefix`` before a round closes.

    :param staging_prefix: ``s3://bucket/prefix/`` where this run's edits were written (round 1):
        ``staging_prefix(bucket, dag_id, run_id)`` from ``storage.review``, as the listing's
        ``stage_prefix``. It must not hold the later rounds' prefixes. (templated)
    :param publish_prefix: ``s3://bucket/prefix/`` where approved images go, under their path relative
        to the staging prefix. (templated)
    :param review_round: this gate's round: 1 for the edits, 2 for their re-edits, and so on.
    :param max_rounds: the last round in which a re-edit may be asked for is ``max_rounds - 1``.
    :param undecided: ``reject`` or ``approve``: what an image nobody decided on gets when the round
        closes, and so on a timeout.
    :param response_timeout: how long to wait for the answer; None waits for ever.
    :param enabled: off: no round, no wait, nothing published (a DAG param's "review"). (templated)
    :param s3_extra_args: what every S3 write adds, with ``S3Hook``'s meaning. (templated)
    :param aws_conn_id: the AWS connection for S3.
    """

    template_fields: Sequence[str] = (
        "subject",
        "body",
        "staging_prefix",
        "publish_prefix",
        "enabled",
        "s3_extra_args",
    )

    def __init__(
        self,
        *,
        staging_prefix: str,
        publish_prefix: str,
        review_round: int = 1,
        max_rounds: int = 2,
        undecided: str = "reject",
        response_timeout: timedelta | None = None,
        enabled: bool | str = True,
        s3_extra_args: dict[str, Any] | None = None,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        if not HAS_HITL:
            raise BetterTokenConfigError(
                "BetterTokenReviewOperator needs Airflow 3.1 or later: the review gate is a human-in-the-"
                f"loop task, which Airflow 3.0 does not have ({HITL_MISSING}). Upgrade to Airflow 3.1+, or "
                "leave the review gate out of this DAG"
            )
        if undecided not in UNDECIDED_CHOICES:
            raise BetterTokenInputError(
                f"undecided={undecided!r} is not allowed; use one of: {', '.join(UNDECIDED_CHOICES)}"
            )
        if not 1 <= review_round <= max_rounds:
            raise BetterTokenInputError(
                f"review_round={review_round!r} must be from 1 to max_rounds={max_rounds!r}"
            )
        super().__init__(
            subject=f"Review the edited images (round {review_round})",
            body="",
            options=OPTIONS,
            defaults=[APPLY],
            response_timeout=response_timeout,
            **kwargs,
        )
        self.staging_prefix = staging_prefix
        self.publish_prefix = publish_prefix
        self.review_round = review_round
        self.max_rounds = max_rounds
        self.undecided = undecided
        self.enabled = enabled
        self._take_s3_arguments(s3_extra_args, aws_conn_id)

    def _prefixes(self, ti: Any) -> tuple[S3Location, S3Location]:
        with fail_task_on_permanent_error():
            staging = parse_s3_prefix(self.staging_prefix, "staging_prefix")
            publish = parse_s3_prefix(self.publish_prefix, "publish_prefix")
        if publish.bucket == staging.bucket and publish.key.startswith(staging.key):
            raise BetterTokenInputError(
                f"publish_prefix {self.publish_prefix!r} lies inside staging_prefix {self.staging_prefix!r}; "
                "give them separate prefixes"
            )
        for later in range(2, self.max_rounds + 1):
            reedits = self._round_prefix(staging.bucket, ti, later)
            if reedits.key.startswith(staging.key):
                raise BetterTokenInputError(
                    f"staging_prefix {self.staging_prefix!r} holds {reedits.uri}, where re-edits are staged: "
                    "use storage.review.staging_prefix(bucket, dag_id, run_id), round 1's own prefix"
                )
        return staging, publish

    @staticmethod
    def _round_prefix(bucket: str, ti: Any, review_round: int) -> S3Location:
        return parse_s3_prefix(staging_prefix(bucket, ti.dag_id, ti.run_id, review_round), "staging prefix")

    def _store(self, ti: Any, staging: S3Location) -> ReviewStore:
        location = review_location(staging.bucket, ti.dag_id, ti.run_id)
        return ReviewStore(self.s3_hook, location, extra_args=self.s3_write_args)

    def execute(self, context: Context) -> Any:
        ti = context["ti"]
        if not is_on(self.enabled):
            self.log.info("Review is off for this run: nothing to wait for")
            return []
        staging, publish = self._prefixes(ti)
        store = self._store(ti, staging)
        with fail_task_on_permanent_error():
            # Round 1 reviews what the edits staged; a later round, the re-edits its gate asked for.
            if self.review_round == 1:
                staged = store.staged(staging, ti.dag_id, ti.run_id)
            else:
                known = store.read()
                staged = store.reedits_made(known, self.review_round) if known else []
            extra = self.s3_write_args

            def open_round(current: ReviewRecord | None) -> ReviewRecord:
                record = current or ReviewRecord(
                    dag_id=ti.dag_id,
                    run_id=ti.run_id,
                    bucket=staging.bucket,
                    staging_prefix=staging.uri,
                    publish_prefix=publish.uri,
                    max_rounds=self.max_rounds,
                    write_args=extra,
                )
                return record.open(self.review_round, staged, _now())

            record = store.update(open_round)
        assert record is not None
        pending = [
            i for i in record.items.values() if i.round == self.review_round and i.state is ItemState.PENDING
        ]
        if not pending:
            self.log.info("Round %d has no image to review; nothing to wait for", self.review_round)
            return self._after(context, store, record, publish, None)
        url = review_page_url(ti.dag_id, ti.run_id)
        self.body = (
            f"**{len(pending)} images** of run `{ti.run_id}` wait for review (round {self.review_round} "
            f"of {self.max_rounds}).\n\n[Open the review page]({url}): approve, reject or re-edit each "
            "image, then submit the page.\n\nThen answer here: the round closes, approved images are "
            f"published under `{publish.uri}`, re-edits are made and come back for review. An image "
            f"nobody decided on is **{self.undecided}ed** (also on a timeout) unless you choose otherwise."
        )
        self.log.info("%d images wait for review at %s", len(pending), url)
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        answer = super().execute_complete(context, event)
        ti = context["ti"]
        staging, publish = self._prefixes(ti)
        store = self._store(ti, staging)
        chosen = (answer.get("chosen_options") or [APPLY])[0]
        user = answer.get("responded_by_user") or event.get("responded_by_user")
        by = (user or {}).get("name") if isinstance(user, dict) else None
        at = answer.get("responded_at") or event.get("responded_at")
        at = at.isoformat(timespec="seconds") if isinstance(at, datetime) else str(at or _now())
        undecided = {APPROVE_REST: "approve", REJECT_REST: "reject"}.get(chosen, self.undecided)
        close = RoundClose(
            round=self.review_round,
            by=by,
            at=at,
            chosen=chosen,
            timed_out=by is None,
            undecided=undecided,
        )
        reedit_prefix = self._round_prefix(staging.bucket, ti, self.review_round + 1).key
        with fail_task_on_permanent_error():
            record = store.update(
                lambda current: current.close(self.review_round, close, reedit_prefix) if current else None
            )
        if record is None:
            raise BetterTokenInputError(
                f"the review record {store.location.uri} is gone; nothing was published"
            )
        self.log.info("Round %d closed by %s (%s)", self.review_round, by or "the timeout's default", chosen)
        return self._after(context, store, record, publish, by)

    def _after(
        self, context: Context, store: ReviewStore, record: ReviewRecord, publish: S3Location, by: str | None
    ) -> list[dict[str, Any]]:
        """Publish what was approved, and return the next round's re-edits for the mapped edit."""
        published: dict[str, str] = {}
        with fail_task_on_permanent_error():
            for item in record.approved():
                # Its name, recorded when it was staged (a re-edit's is its original's): never guessed.
                target = S3Location(publish.bucket, publish.key + item.name)
                source = S3Location(record.bucket, item.key)
                if store.publish(source, target) or self._same_image(store, source, target):
                    published[item.key] = target.uri
                    self.log.info("Published %s -> %s", source.uri, target.uri)
                else:
                    self.log.warning(
                        "Not publishing %s: %s exists with another image", source.uri, target.uri
                    )
            if published:
                record = (
                    store.update(lambda current: current.published(published) if current else None) or record
                )
        counts = record.counts()
        context["ti"].xcom_push(key=COUNTS_KEY, value=counts)
        self.log.info("Review of run %s so far: %s", record.run_id, counts)
        next_round = self.review_round + 1
        reedits = []
        for item in record.reedits(next_round):
            if item.state is not ItemState.PENDING or not item.sources:
                continue
            reedits.append(
                {
                    "source": list(item.sources),
                    "dest": f"s3://{record.bucket}/{item.key}",
                    "prompt": item.prompt,
                    "size": item.size or "auto",
                    "image_label": f"{item.name}, round {item.round}",
                }
            )
        if reedits:
            self.log.info("%d re-edits go to round %d, each a new paid edit", len(reedits), next_round)
        return reedits

    @staticmethod
    def _same_image(store: ReviewStore, source: S3Location, target: S3Location) -> bool:
        """Whether the published object is this very image already (a retried gate task)."""
        a, b = store.io.head(source), store.io.head(target)
        digest = a.metadata.get("png-sha256") if a.found else None
        return bool(digest) and b.found and b.metadata.get("png-sha256") == digest
