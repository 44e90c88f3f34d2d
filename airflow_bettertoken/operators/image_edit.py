"""The operator: S3 references in, one paid edit, one validated PNG out to S3, metadata to XCom."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import Stats
from airflow.sdk import Asset, AssetAlias, BaseOperator
from botocore.exceptions import BotoCoreError, ClientError

from airflow_bettertoken.exceptions import (
    BetterTokenInputError,
    BetterTokenOutputExistsError,
    BetterTokenSizeMismatchError,
    BetterTokenUploadError,
    fail_task_on_permanent_error,
)
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook, EditResult
from airflow_bettertoken.locations import S3Location, output_location, parse_dest, parse_s3_uri
from airflow_bettertoken.png import read_png_header, verify_png
from airflow_bettertoken.protocol import (
    MAX_IMAGE_BYTES,
    MODEL,
    check_image,
    check_image_count,
    check_prompt,
    check_size,
    fingerprint,
)
from airflow_bettertoken.retry import RetryPolicy
from airflow_bettertoken.spill import SpillDir

if TYPE_CHECKING:
    from airflow.sdk import Context

IF_EXISTS = ("skip", "replace", "fail")
ON_SIZE_MISMATCH = ("record", "warn", "fail")
# S3 user metadata is limited to 2 KB; longer source lists are recorded as a digest.
_MAX_SOURCES_METADATA = 1024


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
    :param retry: retry policy fields that override the connection extra, e.g. ``{"max_attempts": 2}``.
    :param spill_dir: where a paid image is kept if it cannot be uploaded; default a folder in the temp dir.
    :param upload_deadline: seconds to keep retrying a failed upload before spilling.
    :param bettertoken_conn_id: the BetterToken connection.
    :param aws_conn_id: the AWS connection for S3.
    """

    template_fields: Sequence[str] = ("prompt", "source", "dest", "size")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        prompt: str,
        source: str | list[str],
        dest: str,
        size: str = "auto",
        if_exists: str = "skip",
        on_size_mismatch: str = "record",
        retry: dict[str, Any] | None = None,
        spill_dir: str | None = None,
        upload_deadline: float = 120.0,
        bettertoken_conn_id: str = BetterTokenHook.default_conn_name,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt
        self.source = source
        self.dest = dest
        self.size = size
        self.if_exists = if_exists
        self.on_size_mismatch = on_size_mismatch
        self.retry = retry
        self.spill_dir = spill_dir
        self.upload_deadline = upload_deadline
        self.bettertoken_conn_id = bettertoken_conn_id
        self.aws_conn_id = aws_conn_id
        # Whatever is known before templating fails the DAG at parse time.
        _choice("if_exists", if_exists, IF_EXISTS)
        _choice("on_size_mismatch", on_size_mismatch, ON_SIZE_MISMATCH)
        RetryPolicy.check_options(retry or {})
        if not _is_template(size):
            check_size(size)
        if not _is_template(prompt):
            check_prompt(prompt)
        if not _is_template(dest):
            parse_dest(dest)

    @cached_property
    def hook(self) -> BetterTokenHook:
        return BetterTokenHook(self.bettertoken_conn_id, retry=self.retry)

    @cached_property
    def s3_hook(self) -> S3Hook:
        return S3Hook(aws_conn_id=self.aws_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        with fail_task_on_permanent_error():
            xcom = self._edit(context)
        self._lineage = (xcom["source_uris"], xcom["output_uri"])
        if xcom["skipped"]:
            Stats.incr("bettertoken.output.skipped")
        else:
            self._report_asset_events(context, xcom)
        return xcom

    def _report_asset_events(self, context: Context, xcom: dict[str, Any]) -> None:
        """Add the written object to every ``AssetAlias`` in ``outlets``, so DAGs scheduled on it run."""
        extra = {"width": xcom["width"], "height": xcom["height"], "sha256": xcom["sha256"]}
        for outlet in self.outlets:
            if isinstance(outlet, AssetAlias):
                context["outlet_events"][outlet].add(Asset(uri=xcom["output_uri"]), extra=extra)

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

    def _edit(self, context: Context) -> dict[str, Any]:
        prompt = check_prompt(self.prompt)
        size = check_size(self.size)
        source_uris = [self.source] if isinstance(self.source, str) else list(self.source)
        check_image_count(len(source_uris))
        sources = [parse_s3_uri(uri, "source") for uri in source_uris]
        output = output_location(parse_dest(self.dest), sources[0])
        # An unknown connection or a missing key fails here, before S3 and the API are touched.
        settings = self.hook.settings

        existing = self.s3_hook.head_object(output.key, output.bucket)
        if existing is not None:
            if self.if_exists == "skip":
                self.log.info("%s exists; skipping without an API call", output.uri)
                return self._existing_result(output, existing, source_uris)
            if self.if_exists == "fail":
                raise BetterTokenOutputExistsError(f"{output.uri} exists and if_exists='fail'")
            self.log.info("%s exists and will be replaced", output.uri)
        elif not self.s3_hook.check_for_bucket(output.bucket):
            raise BetterTokenInputError(f"dest bucket {output.bucket!r} does not exist; create it first")

        # Names the logical edit: the same inputs give the same digest on every worker and every try.
        digest = fingerprint(MODEL, prompt, size, source_uris, output.uri)
        spill = SpillDir(self.spill_dir)
        spilled = spill.load(digest)
        if spilled is not None:
            png, meta = spilled
            self.log.info("Found this output's paid image in the spill directory; uploading it, no API call")
            result = EditResult(png=png, **meta)
        else:
            images = [self._read_source(location) for location in sources]
            result = self.hook.edit_image(
                prompt, images, size, idempotency_key=self._idempotency_key(context, digest)
            )
        xcom = self._store(output, result, prompt, source_uris, spill, digest, settings.max_pixels)
        spill.discard(digest)
        return xcom

    def _read_source(self, location: S3Location) -> tuple[str, bytes]:
        head = self.s3_hook.head_object(location.key, location.bucket)
        if head is None:
            raise BetterTokenInputError(f"source {location.uri} does not exist (no such bucket or key)")
        if head["ContentLength"] > MAX_IMAGE_BYTES:
            raise BetterTokenInputError(
                f"source {location.uri} is {head['ContentLength']} bytes; "
                f"at most {MAX_IMAGE_BYTES} (50 MB) are allowed"
            )
        body = self.s3_hook.get_conn().get_object(Bucket=location.bucket, Key=location.key)["Body"]
        data = body.read()
        check_image(location.uri, data)
        return location.key.rsplit("/", 1)[-1], data

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
        max_pixels: int,
    ) -> dict[str, Any]:
        """Validate the whole PNG, apply the size policy, and upload it; keep it locally if that fails."""
        verify_png(result.png, max_pixels)
        sha256 = hashlib.sha256(result.png).hexdigest()
        if result.size_matches is False:
            message = (
                f"asked for {result.requested_size}, got {result.width}x{result.height} for {output.uri}"
            )
            if self.on_size_mismatch == "fail":
                path = self._spill(spill, digest, result)
                raise BetterTokenSizeMismatchError(
                    f"{message}; on_size_mismatch='fail'. The image (sha256 {sha256}) is kept at {path}"
                )
            Stats.incr("bettertoken.output.size_mismatch")
            if self.on_size_mismatch == "warn":
                self.log.warning("Size mismatch: %s", message)
        metadata = {
            "model": MODEL,
            "requested-size": result.requested_size,
            "width": str(result.width),
            "height": str(result.height),
            "png-sha256": sha256,
            "prompt-sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        }
        metadata.update(sources_metadata(source_uris))

        written = self._upload(output, result.png, metadata, spill, digest, result)
        if not written:
            self.log.warning(
                "Another task wrote %s first; this task's image (sha256 %s) was not stored",
                output.uri,
                sha256,
            )
            existing = self.s3_hook.head_object(output.key, output.bucket) or {}
            return self._existing_result(output, existing, source_uris)
        self.log.info("Wrote %s: %dx%d, %d bytes", output.uri, result.width, result.height, len(result.png))
        return xcom_record(
            output,
            width=result.width,
            height=result.height,
            requested_size=result.requested_size,
            nbytes=len(result.png),
            sha256=sha256,
            model=MODEL,
            source_uris=source_uris,
            result=result,
        )

    def _upload(
        self,
        output: S3Location,
        png: bytes,
        metadata: dict[str, str],
        spill: SpillDir,
        digest: str,
        result: EditResult,
    ) -> bool:
        """Put the object, create-only unless replacing; False if another writer won the race.

        Failures are retried with backoff until ``upload_deadline``; then the paid image goes to the
        spill directory and the task fails, retryable, naming where the image is.
        """
        params: dict[str, Any] = {
            "Bucket": output.bucket,
            "Key": output.key,
            "Body": png,
            "ContentType": "image/png",
            "Metadata": metadata,
        }
        if self.if_exists != "replace":
            params["IfNoneMatch"] = "*"
        deadline = time.monotonic() + self.upload_deadline
        wait = 1.0
        while True:
            try:
                self.s3_hook.get_conn().put_object(**params)
                return True
            except ClientError as err:
                status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
                if status == 412:
                    return False
                failure: Exception = err
                # Access denied, no such bucket...: waiting will not help, so keep the image now.
                permanent = 400 <= status < 500 and status not in (408, 429)
            except BotoCoreError as err:
                failure, permanent = err, False
            if permanent or time.monotonic() + wait > deadline:
                break
            self.log.warning("Upload of %s failed (%s); retrying in %.0f s", output.uri, failure, wait)
            time.sleep(wait)
            wait = min(wait * 2, 30.0)
        path = self._spill(spill, digest, result)
        raise BetterTokenUploadError(
            f"could not write the paid image to {output.uri} ({failure}). It is kept at {path} "
            f"(sha256 {metadata['png-sha256']}); a rerun on this worker uploads it without paying again"
        ) from failure

    @staticmethod
    def _spill(spill: SpillDir, digest: str, result: EditResult) -> str:
        meta = {
            "width": result.width,
            "height": result.height,
            "requested_size": result.requested_size,
            "revised_prompt": result.revised_prompt,
            "usage": result.usage,
            "request_id": result.request_id,
            "attempts": result.attempts,
            "elapsed_s": result.elapsed_s,
        }
        return str(spill.save(digest, result.png, meta))

    def _existing_result(self, output: S3Location, head: dict, source_uris: list[str]) -> dict[str, Any]:
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
            first = (
                self.s3_hook.get_conn()
                .get_object(Bucket=output.bucket, Key=output.key, Range="bytes=0-63")["Body"]
                .read()
            )
            header = read_png_header(first)
            width, height = header.width, header.height
        return xcom_record(
            output,
            width=width,
            height=height,
            requested_size=meta.get("requested-size"),
            nbytes=head.get("ContentLength"),
            sha256=meta.get("png-sha256"),
            model=meta.get("model"),
            source_uris=source_uris,
            result=None,
        )


def sources_metadata(source_uris: list[str]) -> dict[str, str]:
    """The sources as S3 user metadata: the URI list, or its digest when too long or not ASCII."""
    text = json.dumps(source_uris)
    if len(text) <= _MAX_SOURCES_METADATA and text.isascii():
        return {"sources": text}
    return {"sources-sha256": hashlib.sha256(text.encode()).hexdigest()}


def xcom_record(
    output: S3Location,
    *,
    width: int,
    height: int,
    requested_size: str | None,
    nbytes: int | None,
    sha256: str | None,
    model: str | None,
    source_uris: list[str],
    result: EditResult | None,
) -> dict[str, Any]:
    """The task's small, JSON-safe return value; ``result`` is None when no call was made (skipped)."""
    size_matches = None
    if requested_size not in (None, "auto"):
        size_matches = requested_size == f"{width}x{height}"
    return {
        "output_uri": output.uri,
        "bucket": output.bucket,
        "key": output.key,
        "width": width,
        "height": height,
        "requested_size": requested_size,
        "size_matches": size_matches,
        "bytes": nbytes,
        "sha256": sha256,
        "model": model,
        "source_uris": source_uris,
        "revised_prompt": result.revised_prompt if result else None,
        "usage": result.usage if result else None,
        "request_id": result.request_id if result else None,
        "attempts": result.attempts if result else 0,
        "elapsed_s": result.elapsed_s if result else 0.0,
        "skipped": result is None,
    }
