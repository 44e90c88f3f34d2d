"""A catalog backfill in one call: the listing, the mapped edits, the next chunk and the manifest, wired.

Wiring the four operators by hand stays possible (and is what this module does); most DAGs need only::

    with DAG("catalog", schedule=None, max_active_runs=1, ...):
        catalog_backfill(
            source_prefix="s3://in/catalog/",
            dest_prefix="s3://out/catalog-edited/",
            prompt="Put the product on a plain white background",
            until_done=True,
        )
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from airflow.providers.common.compat.sdk import TaskGroup, task

from airflow_bettertoken.exceptions import (
    BetterTokenConfigError,
    BetterTokenInputError,
    fail_task_on_permanent_error,
)
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
from airflow_bettertoken.operators._hitl import HAS_HITL, HITL_MISSING
from airflow_bettertoken.operators._spend_cap import spend_caps
from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator
from airflow_bettertoken.operators.manifest import BetterTokenManifestOperator
from airflow_bettertoken.operators.next_chunk import BetterTokenNextChunkOperator, is_on
from airflow_bettertoken.operators.review import BetterTokenReviewOperator
from airflow_bettertoken.protocol.spend import check_max_billed_calls
from airflow_bettertoken.protocol.templates import is_template
from airflow_bettertoken.protocol.wire import check_prompt, check_size
from airflow_bettertoken.storage.locations import parse_s3_prefix
from airflow_bettertoken.storage.review import staging_prefix

__all__ = ["catalog_backfill"]

#: The rounds of a reviewed backfill: the edits' review, then one of the re-edits it asked for.
REVIEW_ROUNDS = 2


def _fixed(text: Any) -> bool:
    """Text known when the DAG is parsed, so it can be checked then (a template is checked when rendered)."""
    return isinstance(text, str) and not is_template(text)


def _check_fixed_arguments(
    source_prefix: Any, dest_prefix: Any, prompt: Any, size: Any, max_edits_per_run: Any
) -> None:
    """Fail the DAG at parse time, before any paid call, on what is wrong already."""
    if _fixed(source_prefix):
        parse_s3_prefix(source_prefix, "source_prefix")
    if _fixed(dest_prefix):
        parse_s3_prefix(dest_prefix, "dest_prefix")
    if _fixed(prompt):
        check_prompt(prompt)
    if _fixed(size):
        check_size(size)
    if isinstance(max_edits_per_run, bool) or (isinstance(max_edits_per_run, int) and max_edits_per_run < 1):
        raise BetterTokenInputError(
            f"catalog_backfill max_edits_per_run={max_edits_per_run!r} must be a whole number of at least 1, "
            "or a template such as '{{ params.max_edits_per_run }}'"
        )


@task(task_id="staging_prefix")
def _staging_prefix(dest_prefix: str, review: Any, ti: Any = None) -> str:
    """Where this run's edits wait for their review, in the destination's bucket; empty with review off."""
    if not is_on(review):
        return ""
    with fail_task_on_permanent_error():
        dest = parse_s3_prefix(dest_prefix, "dest_prefix")
    assert ti is not None  # Airflow passes the task instance
    return staging_prefix(dest.bucket, ti.dag_id, ti.run_id)


def catalog_backfill(
    *,
    source_prefix: str,
    dest_prefix: str,
    prompt: str,
    size: str = "auto",
    max_edits_per_run: int | str = 500,
    until_done: bool | str = False,
    retry_failed: bool | str = False,
    conf_updates: Mapping[str, Any] | None = None,
    pool: str | None = "bettertoken",
    max_billed_calls: int | None = None,
    max_spend: str | None = None,
    max_spend_per_run: str | None = None,
    review: bool | str = False,
    review_timeout: timedelta | None = timedelta(hours=48),
    undecided: str = "reject",
    edit_retries: int = 2,
    edit_retry_delay: timedelta = timedelta(seconds=30),
    s3_extra_args: dict[str, Any] | None = None,
    bettertoken_conn_id: str = BetterTokenHook.default_conn_name,
    aws_conn_id: str | None = "aws_default",
    group_id: str = "backfill",
    prefix_group_id: bool = False,
) -> TaskGroup:
    """Edit every image under ``source_prefix`` into ``dest_prefix``, a chunk per run: one task group.

    Builds, inside the current DAG, ``list_images`` (the pending images, at most ``max_edits_per_run``),
    ``edit_image`` (one mapped, paid edit per image, in ``pool``), ``next_chunk`` (triggers the next run
    while images remain, when ``until_done`` may be on) and ``write_manifest`` (the run's record and spend
    beside the outputs, ``dest_prefix`` + ``_manifest.json``; it fails the run if an edit failed). The
    tasks keep these ids, unprefixed, unless ``prefix_group_id`` is set: two backfills in one DAG need it.
    Chain the runs one after another with the DAG's ``max_active_runs=1``.

    With ``review`` on, the edits are staged under the run's staging prefix and a person approves,
    rejects or re-edits each one before it is published under ``dest_prefix`` (Airflow 3.1 and later):
    ``staging_prefix``, ``review`` (the human-in-the-loop gate), ``reedit_image`` (the re-edits, paid
    again) and ``review_reedits`` join the group, and the next chunk waits for both reviews.

    A literal ``False`` for ``until_done`` or ``review`` leaves their tasks out; a template such as
    ``"{{ params.until_done }}"`` keeps them and decides per run.

    :param source_prefix: ``s3://bucket/prefix/`` to edit, recursively. (templated)
    :param dest_prefix: ``s3://bucket/prefix/`` for the outputs, at each source's relative path. (templated)
    :param prompt: what to do with each image. (templated)
    :param size: the output size, one of ``SIZES``. (templated)
    :param max_edits_per_run: the edits one run plans, from 1 to ``[core] max_map_length``. (templated)
    :param until_done: trigger the next run while images remain. (templated)
    :param retry_failed: plan again the edits that failed for good in earlier runs of the chain. (templated)
    :param conf_updates: what the next run's conf changes, e.g. to pin a day. (templated)
    :param pool: the Airflow pool that caps the paid calls in flight; create it before the first run.
    :param max_billed_calls: calls for one image that may have been billed, ever, before no more are sent;
        default the connection's extra, else 2.
    :param max_spend: the cap on what the whole chain of runs spends, in the connection's price table's
        currency (``"25.00"`` or ``"USD 25.00"``), e.g. ``"{{ params.max_spend }}"``; unset, none. Each run
        plans only the edits whose estimate fits what is left, and its edits stop once their calls used
        up its reservation; the chain then stops and says how to resume. (templated)
    :param max_spend_per_run: the cap on what one run spends. (templated)
    :param review: stage the edits until a person approves each one (Airflow 3.1+). (templated)
    :param review_timeout: how long each review round waits for its answer; None waits for ever.
    :param undecided: ``reject`` or ``approve``: what an image nobody decided on gets when a round closes.
    :param edit_retries: Airflow's retries of each edit task (the API call has its own retry loop).
    :param edit_retry_delay: the wait before such a retry.
    :param s3_extra_args: what every S3 write adds, with ``S3Hook``'s meaning. (templated)
    :param bettertoken_conn_id: the BetterToken connection.
    :param aws_conn_id: the AWS connection for S3.
    :param group_id: the task group's id.
    :param prefix_group_id: prefix the tasks' ids with ``group_id``.
    :return: the task group, for dependencies such as ``upstream >> catalog_backfill(...)``.
    """
    building_review = review is not False
    if building_review and not HAS_HITL:
        raise BetterTokenConfigError(
            "catalog_backfill(review=...) needs Airflow 3.1 or later: the review gate is a human-in-the-"
            f"loop task, which Airflow 3.0 does not have ({HITL_MISSING}). Upgrade to Airflow 3.1+, or "
            "leave review out"
        )
    _check_fixed_arguments(source_prefix, dest_prefix, prompt, size, max_edits_per_run)
    # The budget: a cap on the calls per image, and on the money of a run and of the chain.
    budget: dict[str, Any] = {}
    if max_billed_calls is not None:
        budget["max_billed_calls"] = check_max_billed_calls(max_billed_calls, "catalog_backfill")
    caps = spend_caps(max_spend, max_spend_per_run, "catalog_backfill")
    budget.update(caps)
    connections = {"s3_extra_args": s3_extra_args, "aws_conn_id": aws_conn_id}
    edit_options = {
        "retries": edit_retries,
        "retry_delay": edit_retry_delay,
        "bettertoken_conn_id": bettertoken_conn_id,
        **({"pool": pool} if pool else {}),
        **budget,
        **connections,
    }

    with TaskGroup(group_id=group_id, prefix_group_id=prefix_group_id) as group:
        staging = _staging_prefix(dest_prefix, review) if building_review else None
        images = BetterTokenListImagesOperator(
            task_id="list_images",
            source_prefix=source_prefix,
            dest_prefix=dest_prefix,
            stage_prefix=staging,
            max_edits=max_edits_per_run,
            replan_failed=retry_failed,
            size=size,
            bettertoken_conn_id=bettertoken_conn_id,
            **caps,
            **connections,
        )
        edits = BetterTokenImageEditOperator.partial(
            task_id="edit_image", prompt=prompt, size=size, **edit_options
        ).expand_kwargs(images.output)
        last = edits
        if building_review:
            gate = dict(
                staging_prefix=staging,
                publish_prefix=dest_prefix,
                max_rounds=REVIEW_ROUNDS,
                undecided=undecided,
                response_timeout=review_timeout,
                enabled=review,
                # all_done: the images that were made are reviewed even when another edit failed.
                trigger_rule="all_done",
                **connections,
            )
            first_review = BetterTokenReviewOperator(task_id="review", review_round=1, **gate)
            # Each re-edit is a new logical edit in the spend ledger, paid again, with the revised prompt.
            reedits = BetterTokenImageEditOperator.partial(
                task_id="reedit_image", if_exists="replace", **edit_options
            ).expand_kwargs(first_review.output)
            last_review = BetterTokenReviewOperator(task_id="review_reedits", review_round=2, **gate)
            last = edits >> first_review >> reedits >> last_review
        next_chunk = None
        if until_done is not False:
            next_chunk = BetterTokenNextChunkOperator(
                task_id="next_chunk",
                edits=images.output,
                results=edits.output,
                until_done=until_done,
                conf_updates=dict(conf_updates or {}),
            )
            last = last >> next_chunk
        manifest = BetterTokenManifestOperator(
            task_id="write_manifest",
            edits=images.output,
            results=edits.output,
            manifest_uri=dest_prefix + "_manifest.json",
            next_chunk_task_id=next_chunk.task_id if next_chunk else None,
            reviewed=review,
            trigger_rule="all_done",
            **connections,
        )
        last >> manifest
    return group
