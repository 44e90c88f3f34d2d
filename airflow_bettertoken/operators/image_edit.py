"""The operator: S3 references in, one paid edit, one checked PNG out to S3, metadata to XCom."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import Asset, AssetAlias, BaseOperator, Stats

from airflow_bettertoken.exceptions import (
    BetterTokenInputError,
    BetterTokenOutputExistsError,
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
from airflow_bettertoken.protocol.wire import MODEL, check_image_count, check_prompt, check_size, fingerprint
from airflow_bettertoken.storage.locations import S3Location, output_location, parse_dest, parse_s3_uri
from airflow_bettertoken.storage.objects import ImageStore, UploadFailed
from airflow_bettertoken.storage.spill import SpillDir

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = ["BetterTokenImageEditOperator"]

IF_EXISTS = ("skip", "replace", "fail")
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
    :param spill_dir: where a paid image is kept if it cannot be uploaded; default a folder in the temp dir.
    :param upload_deadline: seconds to keep retrying a failed upload before spilling.
    :param image_label: the edit's name in the grid and the gallery, e.g. the source's path under the listed
        prefix (the listing sets it); default the first source's file name. (templated)
    :param bettertoken_conn_id: the BetterToken connection.
    :param aws_conn_id: the AWS connection for S3. (templated)
    """

    # aws_conn_id is templated as in the Amazon provider's operators; it also puts the connection in the
    # serialized DAG and the rendered fields, where the gallery reads it (never from XCom).
    template_fields: Sequence[str] = ("prompt", "source", "dest", "size", "image_label", "aws_conn_id")
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
        upload_deadline: float = 120.0,
        image_label: str | None = None,
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
        self.upload_deadline = upload_deadline
        self.image_label = image_label
        self.bettertoken_conn_id = bettertoken_conn_id
        self.aws_conn_id = aws_conn_id
        # Whatever is known before templating fails the DAG at parse time.
        _choice("if_exists", if_exists, IF_EXISTS)
        _choice("on_size_mismatch", on_size_mismatch, ON_SIZE_MISMATCH)
        RetryPolicy.check_options(api_retry or {})
        if not _is_template(size):
            check_size(size)
        if not _is_template(prompt):
            check_prompt(prompt)
        if not _is_template(dest):
            parse_dest(dest)

    @classmethod
    def partial(cls, **kwargs: Any) -> Any:  # type: ignore[override]
        # A mapped task takes its map_index_template from partial(), before __init__ ever runs.
        _default_map_index_template(kwargs)
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
        return ImageStore(S3Hook(aws_conn_id=self.aws_conn_id), self.timing)

    def execute(self, context: Context) -> dict[str, Any]:
        with fail_task_on_permanent_error():
            try:
                xcom = self._edit(context)
            except Exception as err:
                # Why this edit failed, for the run's manifest: a failed task has no return value.
                failure = EditFailure.from_error(self.source, self.dest, err, aws_conn_id=self.aws_conn_id)
                context["ti"].xcom_push(key="failure", value=failure.to_xcom())
                raise
        xcom = dataclasses.replace(xcom, aws_conn_id=self.aws_conn_id)
        self._lineage = (xcom.source_uris, xcom.output_uri)
        if xcom.skipped:
            Stats.incr("bettertoken.output.skipped")
        else:
            self._report_asset_events(context, xcom)
        return xcom.to_xcom()

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
        spill = SpillDir(self.spill_dir)
        result = spill.load(digest)
        if result is not None:
            self.log.info("Found this output's paid image in the spill directory; uploading it, no API call")
            self.hook.verify_png(result.png)
        else:
            images = [self.store.read_source(location) for location in sources]
            result = self.hook.edit_image(
                prompt, images, size, idempotency_key=self._idempotency_key(context, digest)
            )
        xcom = self._store(output, result, prompt, source_uris, spill, digest, made_by=context["ti"])
        spill.discard(digest)
        return xcom

    @staticmethod
    def _idempotency_key(context: Context, digest: str) -> str:
        """The task's identity without its try number, so Airflow's own retries send the same key."""
        ti = context["ti"]
        return fingerprint(ti.dag_id, ti.task_id, ti.run_id, ti.map_index, digest)

    def _store(
        self,
        output: S3Location,
        result: EditResult,
        prompt: str,
        source_uris: list[str],
        spill: SpillDir,
        digest: str,
        made_by: Any,
    ) -> EditXCom:
        """Apply the size policy and upload the PNG; keep it in the spill directory if that fails."""
        if result.size_matches is False:
            message = (
                f"asked for {result.requested_size}, got {result.width}x{result.height} for {output.uri}"
            )
            if self.on_size_mismatch == "fail":
                path = spill.save(digest, result)
                raise BetterTokenSizeMismatchError(
                    f"{message}; on_size_mismatch='fail'. "
                    f"The image (sha256 {result.sha256}) is kept at {path}"
                )
            Stats.incr("bettertoken.output.size_mismatch")
            if self.on_size_mismatch == "warn":
                self.log.warning("Size mismatch: %s", message)
        try:
            written = self.store.put_png(
                output,
                result.png,
                result.s3_metadata(prompt, source_uris, made_by=made_by),
                create_only=self.if_exists != "replace",
                deadline=self.upload_deadline,
            )
        except UploadFailed as err:
            path = spill.save(digest, result)
            raise BetterTokenUploadError(
                f"could not write the paid image to {output.uri} ({err}). It is kept at {path} "
                f"(sha256 {result.sha256}); a rerun on this worker uploads it without paying again"
            ) from err.cause
        if not written:
            self.log.warning(
                "Another task wrote %s first; this task's image (sha256 %s) was not stored",
                output.uri,
                result.sha256,
            )
            return self._existing_result(output, self.store.head(output) or {}, source_uris)
        self.log.info("Wrote %s: %dx%d, %d bytes", output.uri, result.width, result.height, len(result.png))
        return result.to_xcom(output.uri, source_uris, attempts=result.attempts)

    def _existing_result(self, output: S3Location, head: dict, source_uris: list[str]) -> EditXCom:
        """XCom for an output that exists: the metadata on the object, or its PNG header if it has none."""
        meta = head.get("Metadata") or {}
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
            nbytes=head.get("ContentLength"),
            source_uris=source_uris,
        )
