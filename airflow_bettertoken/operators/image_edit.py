"""The operator: S3 references in, one paid edit, one checked PNG out to S3, metadata to XCom."""

from __future__ import annotations

import dataclasses
import socket
import time
import warnings
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import Asset, AssetAlias, BaseOperator, Stats

from airflow_bettertoken.exceptions import (
    BetterTokenBudgetError,
    BetterTokenInputError,
    BetterTokenOutputExistsError,
    BetterTokenResponseError,
    BetterTokenSizeMismatchError,
    BetterTokenUploadError,
    fail_task_on_permanent_error,
)
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
from airflow_bettertoken.operators._links import OutputImageLink, SourceImagesLink
from airflow_bettertoken.protocol.result import (
    EditFailure,
    EditResult,
    EditXCom,
    existing_output_xcom,
    sources_metadata,
)
from airflow_bettertoken.protocol.retry import RetryPolicy, Timing
from airflow_bettertoken.protocol.spend import Holder, SendDecision, Verdict, check_max_billed_calls
from airflow_bettertoken.protocol.wire import MODEL, check_image_count, check_prompt, check_size, fingerprint
from airflow_bettertoken.storage.ledger import SpendLedger
from airflow_bettertoken.storage.locations import S3Location, output_location, parse_dest, parse_s3_uri
from airflow_bettertoken.storage.objects import ImageStore, UploadFailed
from airflow_bettertoken.storage.s3_extra_args import S3ExtraArgs
from airflow_bettertoken.storage.s3_io import ObjectRead
from airflow_bettertoken.storage.spill import SpillDir
from airflow_bettertoken.triggers.claim import ClaimWaitTrigger

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = ["BetterTokenImageEditOperator"]

IF_EXISTS = ("skip", "replace", "fail")
# Who can upload a kept image without paying again: a kept image in S3, or on this worker's disk.
_WHO_FINDS_IT = {
    True: "a retry on any worker uploads it without paying again",
    False: "a rerun on this worker uploads it without paying again",
}
ON_SIZE_MISMATCH = ("record", "warn", "fail")


# Mapped edits are named after their source in the grid, not numbered 0, 1, 2...
MAP_INDEX_TEMPLATE = "{{ task.image_label or task.source_name }}"


def _default_map_index_template(kwargs: dict[str, Any]) -> None:
    """Name the edit after its source unless the user set a template (None counts as unset)."""
    if kwargs.get("map_index_template") is None:
        kwargs["map_index_template"] = MAP_INDEX_TEMPLATE


def _is_template(value: object) -> bool:
    return not isinstance(value, str) or "{{" in value or "{%" in value


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
        bettertoken_conn_id: str = BetterTokenHook.default_conn_name,
        aws_conn_id: str | None = "aws_default",
        retry: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        _default_map_index_template(kwargs)
        super().__init__(**kwargs)
        if retry is not None:
            warnings.warn(
                "BetterTokenImageEditOperator(retry=...) is deprecated; use api_retry=..., which says that "
                "it governs the API call and not Airflow's task retries",
                DeprecationWarning,
                stacklevel=2,
            )
            api_retry = {**retry, **(api_retry or {})}
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
        return BetterTokenHook(self.bettertoken_conn_id, retry=self.api_retry, timing=self.timing)

    @cached_property
    def store(self) -> ImageStore:
        return ImageStore(S3Hook(aws_conn_id=self.aws_conn_id), self.timing, self.s3_extra_args)

    def execute(self, context: Context) -> dict[str, Any]:
        with fail_task_on_permanent_error():
            self._ledger_uri = self._evidence_uri = None
            try:
                xcom = self._edit(context)
            except Exception as err:
                # Why this edit failed, for the run's manifest: a failed task has no return value.
                failure = EditFailure.from_error(
                    self.source,
                    self.dest,
                    err,
                    aws_conn_id=self.aws_conn_id,
                    evidence_uri=self._evidence_uri,
                    ledger_uri=self._ledger_uri,
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

    def _edit(self, context: Context) -> EditXCom:
        prompt = check_prompt(self.prompt)
        size = check_size(self.size)
        source_uris = [self.source] if isinstance(self.source, str) else list(self.source)
        check_image_count(len(source_uris))
        sources = [parse_s3_uri(uri, "source") for uri in source_uris]
        output = output_location(parse_dest(self.dest), sources[0])
        # An unknown connection or a missing key fails here, before S3 and the API are touched.
        self.hook.check_config()

        existing = self.store.head(output)
        if existing is not None:
            if self.if_exists == "skip":
                self.log.info("%s exists; skipping without an API call", output.uri)
                return self._existing_result(output, existing, source_uris)
            if self.if_exists == "fail":
                raise BetterTokenOutputExistsError(f"{output.uri} exists and if_exists='fail'")
            self.log.info("%s exists and will be replaced", output.uri)
        elif not self.store.bucket_exists(output.bucket):
            raise BetterTokenInputError(f"dest bucket {output.bucket!r} does not exist; create it first")

        # Names the logical edit: the same inputs give the same digest on every worker and every try.
        digest = fingerprint(MODEL, prompt, size, source_uris, output.uri)
        ledger = self._ledger(context, output, digest)
        self._ledger_uri = ledger.uri
        decision = ledger.begin()
        if decision.verdict is Verdict.WAIT:
            self._wait_for(decision, output)
        if decision.verdict is Verdict.REFUSE:
            raise BetterTokenBudgetError(f"{decision.reason} (ledger {ledger.uri})")
        cut: bool | None = None
        try:
            result = self._paid_image(ledger, digest, prompt, size, sources, context)
            xcom = self._store(output, result, prompt, source_uris, ledger, digest, made_by=context["ti"])
            cut = False
            return xcom
        except BetterTokenResponseError:
            self._evidence_uri = ledger.evidence_uri
            raise
        except Exception:
            cut = True if ledger.last_call_was_cut else None
            raise
        finally:
            ledger.finish(cut=cut)

    def execute_after_wait(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Back from the triggerer: the output appeared, or its holder let it go. Decide again, from S3."""
        self.log.info("Done waiting for another task's claim (%s)", (event or {}).get("status"))
        return self.execute(context)

    def _ledger(self, context: Context, output: S3Location, digest: str) -> SpendLedger:
        """The output's spend ledger, as this task instance and try sees it."""
        ti = context["ti"]
        holder = Holder(
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=ti.map_index,
            try_number=ti.try_number,
            hostname=getattr(ti, "hostname", None) or socket.gethostname(),
        )
        # A forced replace is a new logical edit: it pays again, once, for this task instance.
        edit_id = (
            digest if self.if_exists != "replace" else fingerprint(digest, "replace", self._identity(ti))
        )
        policy = self.hook.spend_policy(self.max_billed_calls)
        return SpendLedger(
            self.store.s3_hook,
            output,
            edit_id,
            holder,
            policy,
            extra_args=self.store.io.extra_args.for_write(),
            how_to_raise=self.hook.how_to_raise_the_budget(policy.max_billed_calls),
            read_timeout=self.hook.read_timeout,
            timing=self.timing,
        )

    def _wait_for(self, decision: SendDecision, output: S3Location) -> None:
        """Hand the waiting to the triggerer; this task comes back in :meth:`execute_after_wait`."""
        claim = decision.claim
        assert claim is not None
        policy = self.hook.spend_policy(self.max_billed_calls)
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
                poll_seconds=min(10.0, policy.claim_seconds / 3),
            ),
            method_name="execute_after_wait",
        )

    def _paid_image(
        self,
        ledger: SpendLedger,
        digest: str,
        prompt: str,
        size: str,
        sources: list[S3Location],
        context: Context,
    ) -> EditResult:
        """The image this edit paid for before (kept in S3 or on this worker), or a new paid call."""
        kept = ledger.spilled_result() or SpillDir(self.spill_dir).load(digest)
        if kept is not None:
            self.log.info("Found this output's paid image, kept after a failed upload; uploading it, no call")
            self.hook.verify_png(kept.png)
            return kept
        images = [self.store.read_source(location) for location in sources]
        return self.hook.edit_image(
            prompt, images, size, idempotency_key=self._idempotency_key(context, digest), guard=ledger
        )

    @staticmethod
    def _identity(ti: Any) -> list[Any]:
        """The task instance without its try number."""
        return [ti.dag_id, ti.task_id, ti.run_id, ti.map_index]

    @classmethod
    def _idempotency_key(cls, context: Context, digest: str) -> str:
        """The task's identity without its try number, so Airflow's own retries send the same key."""
        return fingerprint(*cls._identity(context["ti"]), digest)

    def _store(
        self,
        output: S3Location,
        result: EditResult,
        prompt: str,
        source_uris: list[str],
        ledger: SpendLedger,
        digest: str,
        made_by: Any,
    ) -> EditXCom:
        """Apply the size policy and upload the PNG; keep it where a retry finds it if that fails."""
        metadata = result.s3_metadata(prompt, source_uris, made_by=made_by)
        if result.size_matches is False:
            message = (
                f"asked for {result.requested_size}, got {result.width}x{result.height} for {output.uri}"
            )
            if self.on_size_mismatch == "fail":
                where = ledger.keep(result, metadata, SpillDir(self.spill_dir), digest)
                raise BetterTokenSizeMismatchError(
                    f"{message}; on_size_mismatch='fail'. "
                    f"The image (sha256 {result.sha256}) is kept at {where}"
                )
            Stats.incr("bettertoken.output.size_mismatch")
            if self.on_size_mismatch == "warn":
                self.log.warning("Size mismatch: %s", message)
        try:
            written = self.store.put_png(
                output,
                result.png,
                metadata,
                create_only=self.if_exists != "replace",
            )
        except UploadFailed as err:
            where = ledger.keep(result, metadata, SpillDir(self.spill_dir), digest)
            raise BetterTokenUploadError(
                f"could not write the paid image to {output.uri} ({err}). It is kept at {where} "
                f"(sha256 {result.sha256}); {_WHO_FINDS_IT[where.startswith('s3://')]}"
            ) from err.cause
        if not written:
            found = self.store.head(output)
            if (found.metadata if found else {}).get("png-sha256") != result.sha256:
                self.log.warning(
                    "Another task wrote %s first; this task's image (sha256 %s) was not stored",
                    output.uri,
                    result.sha256,
                )
                return self._existing_result(output, found, source_uris)
            # Our own write, whose answer was lost: S3 refused the retry because the object is there.
            self.log.info("%s holds this task's image already (a lost answer to its own upload)", output.uri)
        ledger.stored(result.sha256)
        SpillDir(self.spill_dir).discard(digest)
        self.log.info("Wrote %s: %dx%d, %d bytes", output.uri, result.width, result.height, len(result.png))
        return result.to_xcom(output.uri, source_uris, **ledger.xcom_figures())

    def _existing_result(
        self, output: S3Location, head: ObjectRead | None, source_uris: list[str]
    ) -> EditXCom:
        """XCom for an output that exists: the metadata on the object, or its PNG header if it has none."""
        meta = head.metadata if head else {}
        recorded = {k: meta[k] for k in ("sources", "sources-sha256") if k in meta}
        if recorded and recorded != sources_metadata(source_uris):
            raise BetterTokenOutputExistsError(
                f"{output.uri} exists but was made from other sources ({recorded}), so two inputs map to "
                "one output key. Give each edit its own dest, or pass if_exists='replace'"
            )
        if "width" in meta and "height" in meta:
            width, height = int(meta["width"]), int(meta["height"])
        else:
            width, height = self.store.png_size(output)
        return existing_output_xcom(
            output.uri,
            meta,
            width=width,
            height=height,
            nbytes=head.content_length if head else None,
            source_uris=source_uris,
        )
