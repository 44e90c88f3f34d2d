"""The operator: S3 references in, one paid edit, one checked PNG out to S3, metadata to XCom."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import Asset, AssetAlias, BaseOperator, Stats

from airflow_bettertoken.edits.steps import IF_EXISTS, ON_SIZE_MISMATCH, Edit, EditSteps, holder_of
from airflow_bettertoken.exceptions import BetterTokenInputError, fail_task_on_permanent_error
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
from airflow_bettertoken.operators._links import OutputImageLink, SourceImagesLink
from airflow_bettertoken.protocol.budget import parse_money
from airflow_bettertoken.protocol.result import EditFailure, EditXCom
from airflow_bettertoken.protocol.retry import RetryPolicy, Timing
from airflow_bettertoken.protocol.spend import check_max_billed_calls
from airflow_bettertoken.protocol.templates import is_template
from airflow_bettertoken.protocol.wire import check_prompt, check_size
from airflow_bettertoken.storage.locations import parse_dest, parse_s3_uri
from airflow_bettertoken.storage.objects import ImageStore
from airflow_bettertoken.storage.run_budget import RunBudget
from airflow_bettertoken.storage.s3_extra_args import S3ExtraArgs
from airflow_bettertoken.triggers.claim import ClaimWaitTrigger

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from airflow_bettertoken.protocol.spend import Claim
    from airflow_bettertoken.storage.ledger import SpendLedger
    from airflow_bettertoken.storage.locations import S3Location

__all__ = ["BetterTokenImageEditOperator"]

# Mapped edits are named after their source in the grid, not numbered 0, 1, 2...
MAP_INDEX_TEMPLATE = "{{ task.image_label or task.source_name }}"


def _default_map_index_template(kwargs: dict[str, Any]) -> None:
    """Name the edit after its source unless the user set a template (None counts as unset)."""
    if kwargs.get("map_index_template") is None:
        kwargs["map_index_template"] = MAP_INDEX_TEMPLATE


def _is_template(value: object) -> bool:
    """A template, or a value only the run knows (an XCom); either is checked when the task runs."""
    return not isinstance(value, str) or is_template(value)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise BetterTokenInputError(f"{name}={value!r} is not allowed; use one of: {', '.join(allowed)}")


class BetterTokenImageEditOperator(BaseOperator):
    """Edit reference images from S3 with ``gpt-image-2`` and write the PNG back to S3.

    :param prompt: what to do with the references. (templated)
    :param source: one ``s3://bucket/key`` URI, or a list of up to 16 for a multi-reference edit. (templated)
    :param dest: ``s3://bucket/key.png``, or a prefix ending in ``/`` under which the output is named
        after the first source's stem. (templated)
    :param size: one of ``auto``, ``1024x1024``, ``1536x1024``, ``1024x1536``, ``2048x2048``,
        ``2048x1152``, ``3840x2160``, ``2160x3840``. (templated)
    :param if_exists: ``skip`` (make no call, report the existing object), ``replace`` or ``fail``.
    :param on_size_mismatch: ``record`` (in XCom), ``warn`` (also in the log) or ``fail`` (keep the image
        in the spill directory and fail).
    :param api_retry: retry policy fields for the API call that override the connection extra, e.g.
        ``{"max_attempts": 2}``. Not to be confused with Airflow's ``retries`` of the whole task.
    :param spill_dir: where a paid image is kept if it can be written neither to its output nor beside
        the spend ledger in S3; default a folder in the temp dir.
    :param s3_extra_args: what every write to S3 adds to ``put_object``, with ``S3Hook``'s meaning, e.g.
        ``{"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "..."}``; DAG-wide through
        ``default_args``. (templated)
    :param max_billed_calls: calls for this image that may have been billed, ever (across tries, runs
        and DAGs), before no more are sent; default the connection's extra, else 2.
    :param image_label: the edit's name in the grid and the gallery, e.g. the source's path under the listed
        prefix (the listing sets it); default the first source's file name. (templated)
    :param max_spend: the cap of this run's chain (``catalog_backfill`` passes it): when it or
        ``max_spend_per_run`` is set, each call is first counted against the reservation the run's
        listing made under it, and the edit is blocked by budget (``BetterTokenSpendCapError``) once
        that is used up, or when it cannot be read. Unset, no request is made for it. (templated)
    :param max_spend_per_run: the cap of this run alone (see ``max_spend``). (templated)
    :param bettertoken_conn_id: the BetterToken connection.
    :param aws_conn_id: the AWS connection for S3. (templated)
    """

    # aws_conn_id is templated as in the Amazon provider's operators; it also puts the connection in the
    # serialized DAG and the rendered fields, where the gallery reads it (never from XCom).
    template_fields: Sequence[str] = (
        "prompt",
        "source",
        "dest",
        "size",
        "image_label",
        "s3_extra_args",
        "aws_conn_id",
        "max_spend",
        "max_spend_per_run",
    )
    ui_color = "#e8f0fe"
    operator_extra_links = (OutputImageLink(), SourceImagesLink())
    #: Sleep and clocks of the API and upload retry loops; tests replace it to run in virtual time.
    timing = Timing()

    def __init__(
        self,
        *,
        prompt: str,
        source: str | list[str],
        dest: str,
        size: str = "auto",
        if_exists: str = "skip",
        on_size_mismatch: str = "record",
        api_retry: dict[str, Any] | None = None,
        spill_dir: str | None = None,
        s3_extra_args: dict[str, Any] | None = None,
        image_label: str | None = None,
        max_billed_calls: int | None = None,
        max_spend: str | None = None,
        max_spend_per_run: str | None = None,
        bettertoken_conn_id: str = BetterTokenHook.default_conn_name,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        _default_map_index_template(kwargs)
        super().__init__(**kwargs)
        self.prompt = prompt
        self.source = source
        self.dest = dest
        self.size = size
        self.if_exists = if_exists
        self.on_size_mismatch = on_size_mismatch
        self.api_retry = api_retry
        self.spill_dir = spill_dir
        self.s3_extra_args = s3_extra_args
        self.image_label = image_label
        self.max_billed_calls = max_billed_calls
        self.max_spend = max_spend
        self.max_spend_per_run = max_spend_per_run
        self.bettertoken_conn_id = bettertoken_conn_id
        self.aws_conn_id = aws_conn_id
        # Whatever is known before templating fails the DAG at parse time.
        _choice("if_exists", if_exists, IF_EXISTS)
        _choice("on_size_mismatch", on_size_mismatch, ON_SIZE_MISMATCH)
        RetryPolicy.check_options(api_retry or {})
        S3ExtraArgs.check_literal(s3_extra_args)
        if max_billed_calls is not None:
            check_max_billed_calls(max_billed_calls, "BetterTokenImageEditOperator")
        if not _is_template(size):
            check_size(size)
        if not _is_template(prompt):
            check_prompt(prompt)
        if not _is_template(dest):
            parse_dest(dest)

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        # A mapped task takes its map_index_template from partial(), before __init__ ever runs; and
        # __init__ runs only when the task is expanded, so a literal typo is caught here, at parse time.
        _default_map_index_template(kwargs)
        S3ExtraArgs.check_literal(kwargs.get("s3_extra_args"))
        return super().partial(**kwargs)

    @property
    def source_name(self) -> str:
        """The first source's file name, for the grid's map index."""
        first = self.source if isinstance(self.source, str) else (self.source or [""])[0]
        return str(first).rsplit("/", 1)[-1]

    @cached_property
    def hook(self) -> BetterTokenHook:
        return BetterTokenHook(self.bettertoken_conn_id, api_retry=self.api_retry, timing=self.timing)

    @cached_property
    def store(self) -> ImageStore:
        return ImageStore(S3Hook(aws_conn_id=self.aws_conn_id), self.timing, self.s3_extra_args)

    @cached_property
    def steps(self) -> EditSteps:
        return EditSteps(
            self.hook,
            self.store,
            if_exists=self.if_exists,
            on_size_mismatch=self.on_size_mismatch,
            spill_dir=self.spill_dir,
            max_billed_calls=self.max_billed_calls,
            log=self.log,
            timing=self.timing,
        )

    def execute(self, context: Context) -> dict[str, Any]:
        with fail_task_on_permanent_error():
            self._ledger: SpendLedger | None = None
            try:
                xcom = self._edit(context)
            except Exception as err:
                # Why this edit failed, for the run's manifest: a failed task has no return value.
                ledger = self._ledger
                failure = EditFailure.from_error(
                    self.source,
                    self.dest,
                    err,
                    aws_conn_id=self.aws_conn_id,
                    evidence_uri=ledger.evidence_uri if ledger else None,
                    ledger_uri=ledger.uri if ledger else None,
                )
                context["ti"].xcom_push(key="failure", value=failure.dump())
                raise
        xcom = dataclasses.replace(xcom, aws_conn_id=self.aws_conn_id)
        self._lineage = (xcom.source_uris, xcom.output_uri)
        if xcom.skipped:
            Stats.incr("bettertoken.output.skipped")
        else:
            self._report_asset_events(context, xcom)
        return xcom.dump()

    def _report_asset_events(self, context: Context, xcom: EditXCom) -> None:
        """Add the written object to every ``AssetAlias`` in ``outlets``, so DAGs scheduled on it run."""
        extra = {"width": xcom.width, "height": xcom.height, "sha256": xcom.sha256}
        for outlet in self.outlets:
            if isinstance(outlet, AssetAlias):
                context["outlet_events"][outlet].add(Asset(uri=xcom.output_uri), extra=extra)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """The S3 references as inputs and the PNG as output; None without the OpenLineage provider."""
        try:
            from airflow.providers.common.compat.openlineage.facet import Dataset
            from airflow.providers.openlineage.extractors import OperatorLineage
        except ImportError:
            return None
        lineage = getattr(self, "_lineage", None)
        if lineage is None:
            return OperatorLineage()
        source_uris, output_uri = lineage

        def dataset(uri: str) -> Any:
            location = parse_s3_uri(uri, "lineage")
            return Dataset(namespace=f"s3://{location.bucket}", name=location.key)

        return OperatorLineage(inputs=[dataset(uri) for uri in source_uris], outputs=[dataset(output_uri)])

    def _budget(self, edit: Edit, ti: Any) -> RunBudget | None:
        """The run's reservation under its cap, when a cap is set; None otherwise (no request at all)."""
        capped = [
            parse_money(self.max_spend, "max_spend"),
            parse_money(self.max_spend_per_run, "max_spend_per_run"),
        ]
        if not any(capped):
            return None
        return RunBudget(self.store.io, edit.output.bucket, ti.dag_id, ti.run_id)

    def _edit(self, context: Context) -> EditXCom:
        edit = Edit.check(self.prompt, self.source, self.dest, self.size)
        self.steps.budget = self._budget(edit, context["ti"])
        # An unknown connection or a missing key fails here, before S3 and the API are touched.
        self.hook.check_config()
        existing = self.steps.existing_output(edit)
        if existing is not None:
            return existing
        self._ledger = ledger = self.steps.ledger(edit, holder_of(context["ti"]))
        other = self.steps.claim(ledger)
        if other is not None:
            self._wait_for(other, edit.output, ledger)
        return self.steps.make(edit, ledger)

    def execute_after_wait(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Back from the triggerer: the output appeared, or its holder let it go. Decide again, from S3."""
        self.log.info("Done waiting for another task's claim (%s)", (event or {}).get("status"))
        return self.execute(context)

    def _wait_for(self, claim: Claim, output: S3Location, ledger: SpendLedger) -> None:
        """Hand the waiting to the triggerer; this task comes back in :meth:`execute_after_wait`."""
        self.log.info(
            "%s is being made by %s; waiting in the triggerer until it appears or that claim lapses "
            "(in %.0f s unless renewed), without holding a worker slot",
            output.uri,
            claim.holder.label,
            max(0.0, claim.expires_at - time.time()),
        )
        self.defer(
            trigger=ClaimWaitTrigger(
                output_uri=output.uri,
                token=claim.token,
                aws_conn_id=self.aws_conn_id,
                s3_extra_args=self.store.io.extra_args.for_read(),
                poll_seconds=min(10.0, ledger.policy.claim_seconds / 3),
            ),
            method_name="execute_after_wait",
        )
