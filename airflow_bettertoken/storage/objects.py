"""Image objects on S3: reading references, looking at outputs, and writing a PNG without losing it.

Every request goes through :class:`~airflow_bettertoken.storage.s3_io.S3IO`, which applies the
``s3_extra_args`` and explains what S3 refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from airflow_bettertoken.exceptions import BetterTokenInputError, BetterTokenStorageError
from airflow_bettertoken.protocol.png import read_png_header
from airflow_bettertoken.protocol.retry import Timing
from airflow_bettertoken.protocol.wire import MAX_IMAGE_BYTES, check_image
from airflow_bettertoken.storage.findings import StoreCheck
from airflow_bettertoken.storage.locations import RESERVED_PREFIX, S3Location
from airflow_bettertoken.storage.s3_errors import hidden_object_text
from airflow_bettertoken.storage.s3_extra_args import S3ExtraArgs
from airflow_bettertoken.storage.s3_io import S3IO, BucketAccess, ObjectRead, Presence

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

__all__ = ["ImageStore", "UploadFailed"]

log = logging.getLogger(__name__)

# Written, written again create-only, read and deleted by check_writable.
_PROBE_NAME = ".bettertoken-preflight"


class UploadFailed(Exception):
    """An S3 write that failed (after botocore's retries); ``cause`` is the explained S3 error."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class ImageStore:
    """The S3 objects one edit reads and writes, through the Amazon provider's ``S3Hook``.

    :param s3_hook: the hook of the AWS connection.
    :param timing: the clocks and sleep of what waits on this store (see :class:`S3IO`).
    :param s3_extra_args: what every write adds to ``put_object`` (see :class:`S3ExtraArgs`).
    """

    def __init__(
        self,
        s3_hook: S3Hook,
        timing: Timing | None = None,
        s3_extra_args: S3ExtraArgs | Mapping[str, Any] | None = None,
    ) -> None:
        self.s3_hook = s3_hook
        self.timing = timing or Timing()
        self.io = S3IO(s3_hook, s3_extra_args, self.timing)

    def head(self, location: S3Location) -> ObjectRead | None:
        """An output's HEAD answer (``FOUND``), or None when it is not there to be seen.

        A 403 counts as not there: without ``s3:ListBucket`` that is AWS's answer for a missing key.
        Going on is safe, because the upload is create-only unless ``if_exists="replace"``.
        """
        read = self.io.head(location)
        if read.presence is Presence.HIDDEN:
            log.info(
                "%s; taking it as missing: the create-only upload still never overwrites",
                hidden_object_text("HeadObject", location, self.io.conn_id),
            )
        return read if read.found else None

    def bucket_exists(self, bucket: str) -> bool:
        """False only when S3 says the bucket does not exist (404); 403: it exists but cannot be listed."""
        access = self.io.bucket(bucket)
        if access is BucketAccess.FORBIDDEN:
            log.info(
                "S3 answered 403 to HeadBucket of %r: connection %r lacks s3:ListBucket on it; going on",
                bucket,
                self.io.conn_id,
            )
        return access is not BucketAccess.MISSING

    def list_keys(self, prefix: S3Location) -> list[str]:
        """Every key under the prefix, through paginated LISTs: no request per object."""
        return self.io.list_keys(prefix)

    def list_pages(self, prefix: S3Location, start_after: str = "") -> Iterator[list[str]]:
        """The keys under the prefix after ``start_after``, a LIST page at a time."""
        return self.io.list_pages(prefix, start_after)

    def check_writable(self, prefix: S3Location) -> StoreCheck:
        """Probe the destination as the edits use it, so that a wrong bucket or policy fails before paying.

        The probe object is written with the ``s3_extra_args`` (so a policy that requires encryption is
        met or refused here), read back (the edits need ``s3:GetObject`` to find finished outputs),
        written again create-only (S3 must refuse that: a store that accepts it ignores conditional
        writes), and deleted; then a second one, written, read back and deleted under
        ``_bettertoken/spill/``, where the spend ledger keeps its records and the paid images it keeps.

        :raises BetterTokenInputError: when the bucket does not exist.
        :raises BetterTokenStorageError: naming what S3 refused and the permission or setting to fix.
        """
        conn = self.io.conn_id
        access = self.io.bucket(prefix.bucket)
        if access is BucketAccess.MISSING:
            raise BetterTokenInputError(
                f"the destination bucket {prefix.bucket!r} does not exist, or connection {conn!r} cannot "
                "see it; create the bucket or fix the dest prefix"
            )
        probe = S3Location(prefix.bucket, prefix.key + _PROBE_NAME)
        self._write_and_read_back(probe, "to find finished outputs without paying for them again")
        conditional_writes = not self.io.put(probe, b"", if_none_match=True).written
        self.io.delete(probe)
        # The spend ledger and the paid images kept aside live under _bettertoken/ in the same bucket.
        reserved = S3Location(prefix.bucket, f"{RESERVED_PREFIX}spill/{prefix.key}{_PROBE_NAME}")
        self._write_and_read_back(reserved, "for the spend ledger, which is written before each paid call")
        self.io.delete(reserved)
        return StoreCheck(prefix.uri, conditional_writes, access is BucketAccess.FOUND)

    def _write_and_read_back(self, probe: S3Location, why: str) -> None:
        self.io.put(probe, b"")
        if self.io.head(probe).presence is not Presence.FOUND:
            folder = probe.key.rsplit("/", 1)[0] + "/" if "/" in probe.key else ""
            raise BetterTokenStorageError(
                f"connection {self.io.conn_id!r} wrote {probe.uri} but may not read it back: the edits "
                f"need s3:GetObject on arn:aws:s3:::{probe.bucket}/{folder}* {why}",
                operation="HeadObject",
                uri=probe.uri,
                status=403,
            )

    def read_source(self, location: S3Location) -> tuple[str, bytes]:
        """A reference image as ``(filename, bytes)``, checked to be a PNG, JPEG or WEBP of at most 50 MB."""
        head = self.io.head(location)
        if head.presence is Presence.MISSING:
            raise BetterTokenInputError(f"source {location.uri} does not exist (no such bucket or key)")
        if head.presence is Presence.HIDDEN:
            raise BetterTokenInputError(
                f"source {hidden_object_text('HeadObject', location, self.io.conn_id)}. Check the key; "
                "grant s3:ListBucket on the bucket to get a plain 'does not exist' for a missing one"
            )
        size = head.content_length or 0
        if size > MAX_IMAGE_BYTES:
            raise BetterTokenInputError(
                f"source {location.uri} is {size} bytes; at most {MAX_IMAGE_BYTES} (50 MB) are allowed"
            )
        data = self._get(location)
        check_image(location.uri, data)
        return location.key.rsplit("/", 1)[-1], data

    def png_size(self, location: S3Location) -> tuple[int, int]:
        """Width and height from the first bytes of a PNG object, for one written without metadata."""
        header = read_png_header(self._get(location, byte_range="bytes=0-63"))
        return header.width, header.height

    def put_png(
        self,
        location: S3Location,
        png: bytes | bytearray,
        metadata: dict[str, str],
        *,
        create_only: bool,
    ) -> bool:
        """Write the PNG; False if ``create_only`` and another writer won the race (S3 answered 412).

        Throttling, 5xx and connection errors are retried by botocore, as the connection configures
        it; anything else fails at once: waiting does not fix a missing bucket, a denied write or
        missing credentials.

        :raises UploadFailed: when the write failed, after botocore's retries where they apply.
        """
        try:
            result = self.io.put(
                location,
                png,
                content_type="image/png",
                metadata=metadata,
                if_none_match=create_only,
            )
        except BetterTokenStorageError as err:
            raise UploadFailed(err) from err
        return result.written

    def _get(self, location: S3Location, byte_range: str | None = None) -> bytes:
        read = self.io.get(location, byte_range=byte_range)
        if not read.found or read.body is None:
            raise BetterTokenInputError(
                f"cannot read {location.uri}: "
                + (
                    hidden_object_text("GetObject", location, self.io.conn_id)
                    if read.presence is Presence.HIDDEN
                    else "it does not exist"
                )
            )
        return read.body
