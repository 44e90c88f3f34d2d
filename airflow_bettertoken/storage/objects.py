"""Image objects on S3: reading references, looking at outputs, and writing a PNG without losing it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.protocol.png import read_png_header
from airflow_bettertoken.protocol.retry import Failure, RetryLoop, RetryPolicy, Timing
from airflow_bettertoken.protocol.wire import MAX_IMAGE_BYTES, check_image
from airflow_bettertoken.storage.locations import S3Location

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

__all__ = ["ImageStore", "UploadFailed", "upload_policy"]

log = logging.getLogger(__name__)

# Written and deleted again by check_writable.
_PROBE_NAME = ".bettertoken-preflight"


def upload_policy(deadline: float) -> RetryPolicy:
    """Retries of an S3 write: bounded by ``deadline`` seconds rather than by a count."""
    return RetryPolicy(
        max_attempts=1000, deadline=deadline, backoff_initial=1.0, backoff_multiplier=2.0, backoff_max=30.0
    )


class UploadFailed(Exception):
    """An S3 write that failed for good or ran out of time; ``cause`` is S3's error."""

    def __init__(self, cause: Exception, reason: str) -> None:
        super().__init__(f"{cause}; {reason}")
        self.cause = cause


class ImageStore:
    """The S3 objects one edit reads and writes, through the Amazon provider's ``S3Hook``."""

    def __init__(self, s3_hook: S3Hook, timing: Timing | None = None) -> None:
        self.s3_hook = s3_hook
        self.timing = timing or Timing()

    def head(self, location: S3Location) -> dict[str, Any] | None:
        return self.s3_hook.head_object(location.key, location.bucket)

    def bucket_exists(self, bucket: str) -> bool:
        return self.s3_hook.check_for_bucket(bucket)

    def list_keys(self, prefix: S3Location) -> list[str]:
        """Every key under the prefix, through paginated LISTs: no request per object."""
        return self.s3_hook.list_keys(bucket_name=prefix.bucket, prefix=prefix.key) or []

    def check_writable(self, prefix: S3Location) -> None:
        """Write and delete a probe object under the prefix, so that a wrong bucket fails before paying.

        :raises BetterTokenInputError: naming the bucket, the connection and what to fix.
        """
        conn = self.s3_hook.aws_conn_id
        if not self.bucket_exists(prefix.bucket):
            raise BetterTokenInputError(
                f"the destination bucket {prefix.bucket!r} does not exist, or connection {conn!r} cannot "
                "see it; create the bucket or fix the dest prefix"
            )
        probe = prefix.key + _PROBE_NAME
        try:
            self.s3_hook.load_bytes(b"", key=probe, bucket_name=prefix.bucket, replace=True)
            self.s3_hook.delete_objects(prefix.bucket, [probe])
        except (ClientError, BotoCoreError) as err:
            raise BetterTokenInputError(
                f"cannot write to {prefix.uri} with connection {conn!r} ({err}); "
                "it needs s3:PutObject and s3:DeleteObject there"
            ) from err

    def read_source(self, location: S3Location) -> tuple[str, bytes]:
        """A reference image as ``(filename, bytes)``, checked to be a PNG, JPEG or WEBP of at most 50 MB."""
        head = self.head(location)
        if head is None:
            raise BetterTokenInputError(f"source {location.uri} does not exist (no such bucket or key)")
        if head["ContentLength"] > MAX_IMAGE_BYTES:
            raise BetterTokenInputError(
                f"source {location.uri} is {head['ContentLength']} bytes; "
                f"at most {MAX_IMAGE_BYTES} (50 MB) are allowed"
            )
        data = self._get(location)
        check_image(location.uri, data)
        return location.key.rsplit("/", 1)[-1], data

    def png_size(self, location: S3Location) -> tuple[int, int]:
        """Width and height from the first bytes of a PNG object, for one written without metadata."""
        header = read_png_header(self._get(location, Range="bytes=0-63"))
        return header.width, header.height

    def put_png(
        self,
        location: S3Location,
        png: bytes | bytearray,
        metadata: dict[str, str],
        *,
        create_only: bool,
        deadline: float,
    ) -> bool:
        """Write the PNG; False if ``create_only`` and another writer won the race (S3 answered 412).

        Failures are retried as the shared retry policy says, until ``deadline`` seconds have passed.
        A 403 or 404 is not retried: waiting does not fix a missing bucket or a denied write.

        :raises UploadFailed: when the write failed for good or time ran out.
        """
        params: dict[str, Any] = {
            "Bucket": location.bucket,
            "Key": location.key,
            "Body": png,
            "ContentType": "image/png",
            "Metadata": metadata,
        }
        if create_only:
            params["IfNoneMatch"] = "*"
        loop = RetryLoop(upload_policy(deadline), self.timing)
        while True:
            loop.begin_attempt()
            try:
                self.s3_hook.get_conn().put_object(**params)
                return True
            except ClientError as err:
                meta = err.response.get("ResponseMetadata", {})
                status = meta.get("HTTPStatusCode") or 0
                if status == 412 and create_only:
                    return False
                failure: Exception = err
                decision = loop.after_failure(status=status, headers=meta.get("HTTPHeaders"))
            except BotoCoreError as err:
                # No answer from S3. Writing the same object again is safe, so it is always retried.
                failure = err
                decision = loop.after_failure(failure=Failure.NOT_SENT)
            if not decision.retry:
                raise UploadFailed(failure, decision.reason) from failure
            log.warning("Upload of %s failed (%s); retrying in %.1f s", location.uri, failure, decision.wait)
            loop.wait(decision)

    def _get(self, location: S3Location, **kwargs: Any) -> bytes:
        response = self.s3_hook.get_conn().get_object(Bucket=location.bucket, Key=location.key, **kwargs)
        return response["Body"].read()
