"""The provider's one S3 store: every request it makes to S3 goes through :class:`S3IO`.

Outputs, sources, the spend ledger and every record under ``_bettertoken/``, the manifests, the
spill and evidence, the trigger's polls and the UI plugin's reads all come here, so that each carries
the checked ``s3_extra_args`` (``ExpectedBucketOwner`` and ``RequestPayer`` on the reads too), the 403
rule below, the retry classification (:mod:`.s3_errors`) and a :class:`BetterTokenStorageError` that
names the permission and the fix. The answers are typed (:class:`ObjectRead`, :class:`PutResult`,
:class:`BucketAccess`): nobody outside this module reads botocore's dicts.

**The 403 rule.** Without ``s3:ListBucket`` on a bucket, AWS answers a HEAD or GET of a key that does
not exist with 403 (``AccessDenied``), not 404 (``NoSuchKey``); it answers the same when the role
lacks ``s3:GetObject``. So a read never says "missing" for a 403: it says :attr:`Presence.HIDDEN`.
A caller that would create the object when it is missing can go on with a create-only write
(``put(..., if_none_match=True)``): S3 refuses it (``written=False``) if the object exists after all.

**Retries.** botocore's, and only botocore's: the client is made from the connection through ``S3Hook``,
with the connection's ``config_kwargs`` as they are, in botocore's ``standard`` retry mode (3 attempts
with backoff and jitter, for throttling, 5xx and connection errors) unless they set ``retries``. Nothing
here retries on top of that; what botocore gave up on is raised, and :mod:`.s3_errors` says whether
waiting may heal it. Conditional writes that lose a race are a different matter: the record is read
again and decided again (:mod:`.records`), waiting through the store's :class:`Timing`.
"""

from __future__ import annotations

import contextlib
import enum
import io
import os
import threading
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from airflow_bettertoken.exceptions import BetterTokenStorageError
from airflow_bettertoken.protocol.retry import Timing
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.s3_errors import S3Failure, classify, storage_error
from airflow_bettertoken.storage.s3_extra_args import S3ExtraArgs

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

__all__ = ["S3IO", "BucketAccess", "ObjectRead", "Presence", "PutResult"]

#: botocore's standard mode, for connections that do not choose their own retries.
STANDARD_RETRIES = {"mode": "standard"}

# One client per hook, shared by every S3IO made from it (a run's manifest reads a thousand ledgers,
# each through its own record), as S3Hook caches its own; made under a lock, since threads share it.
_clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()


class Presence(enum.Enum):
    """What a HEAD or GET learned about an object."""

    FOUND = "found"
    #: 404: the key does not exist.
    MISSING = "missing"
    #: 403: a key that does not exist, read without ``s3:ListBucket``, or one the role may not read.
    HIDDEN = "hidden"
    #: 412 to a read with ``if_match``: the object is there, but no longer the version asked for.
    CHANGED = "changed"


@dataclass(frozen=True)
class ObjectRead:
    """The answer to :meth:`S3IO.head` or :meth:`S3IO.get`; only ``FOUND`` carries the object's fields."""

    presence: Presence
    etag: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    content_length: int | None = None
    content_type: str | None = None
    body: bytes | None = field(default=None, repr=False)

    @property
    def found(self) -> bool:
        return self.presence is Presence.FOUND


@dataclass(frozen=True)
class PutResult:
    """What :meth:`S3IO.put` did: ``written`` is False when a condition failed (S3 answered 412)."""

    written: bool
    etag: str | None = None


class BucketAccess(enum.Enum):
    """What a HEAD of a bucket learned."""

    FOUND = "found"
    MISSING = "missing"
    #: 403: the bucket exists, but the role lacks ``s3:ListBucket`` on it (or it is another account's).
    FORBIDDEN = "forbidden"


class S3IO:
    """The provider's S3 requests on one connection, with its ``s3_extra_args``.

    :param s3_hook: the Amazon provider's hook for the AWS connection; the client comes from it.
    :param extra_args: ``s3_extra_args``: :class:`S3ExtraArgs`, or a mapping that is checked here. All of
        them go on every write; ``ExpectedBucketOwner`` and ``RequestPayer`` also on the reads.
    :param timing: the clocks and sleep of what waits on this store (the rounds of a
        :class:`~airflow_bettertoken.storage.records.ConditionalRecord`); tests pass virtual time.
    """

    def __init__(
        self,
        s3_hook: S3Hook,
        extra_args: S3ExtraArgs | Mapping[str, Any] | None = None,
        timing: Timing | None = None,
    ) -> None:
        self.s3_hook = s3_hook
        self.extra_args = S3ExtraArgs.parse(extra_args)
        self.timing = timing or Timing()

    @property
    def conn_id(self) -> str | None:
        return self.s3_hook.aws_conn_id

    @cached_property
    def client(self) -> Any:
        """The S3 client, in botocore's standard retry mode unless the connection chose its retries.

        Made on first use, which also checks the extra arguments' values against the client's model.
        """
        from botocore.config import Config

        with _clients_lock:
            client = _clients.get(self.s3_hook)
            if client is None:
                config = self.s3_hook.config
                if not config.retries:
                    config = config.merge(Config(retries=STANDARD_RETRIES))
                client = self.s3_hook.get_client_type(region_name=self.s3_hook.region_name, config=config)
                _clients[self.s3_hook] = client
        self.extra_args.check_values(client.meta.service_model)
        return client

    def put(
        self,
        location: S3Location,
        body: bytes | bytearray,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        if_none_match: bool = False,
        if_match: str | None = None,
    ) -> PutResult:
        """Write one object with the extra arguments; the only way the provider writes to S3.

        Throttling, 5xx and connection errors were retried by botocore, as the connection configures it,
        before this raises; nothing retries them again on top.

        :param if_none_match: create only: S3 refuses the write if the key exists (``If-None-Match: *``).
        :param if_match: replace only the version with this ETag (``If-Match``).
        :returns: the new ETag; or ``written=False`` when a condition failed: 412 (another writer
            came first), or 404 to an ``if_match`` write (that version was deleted). Read again and
            decide again.
        :raises BetterTokenStorageError: when S3 refused the write; it names the botocore class, the
            permission and the fix, and says (``retryable``) whether waiting may heal it. A 409
            ``ConditionalRequestConflict`` (two conditional writes at once) comes with ``retryable=True``
            and ``code="ConditionalRequestConflict"``: read again and decide again.

        A record kept with conditional writes (the spend ledger) reads with :meth:`get` and writes::

            read = io.get(location)                       # FOUND, MISSING or HIDDEN (a 403)
            etag = read.etag if read.found else None
            result = io.put(location, body, content_type="application/json",
                            if_match=etag, if_none_match=etag is None)
            if not result.written: ...                    # another writer won: read and decide again

        A ``HIDDEN`` record may exist: the create-only write then fails (``written=False``), and a
        second ``HIDDEN`` read means the role lacks ``s3:GetObject`` on it, which is worth an error.
        """
        params: dict[str, Any] = {
            **self.extra_args.for_write(),
            "Bucket": location.bucket,
            "Key": location.key,
            "Body": body,
            "ContentType": content_type,
        }
        if metadata:
            params["Metadata"] = dict(metadata)
        if if_none_match:
            params["IfNoneMatch"] = "*"
        if if_match is not None:
            params["IfMatch"] = if_match
        try:
            response = self.client.put_object(**params)
        except (ClientError, BotoCoreError) as err:
            failure = classify(err)
            # 412: the condition failed, another writer came first. 404 to an If-Match write: the
            # version it names was deleted meanwhile, which fails the condition too.
            if ((if_none_match or if_match is not None) and failure.status == 412) or (
                if_match is not None and failure.status == 404
            ):
                return PutResult(False)
            raise self._error(err, "PutObject", location, failure) from err
        return PutResult(True, response.get("ETag"))

    def copy(self, source: S3Location, dest: S3Location, *, if_none_match: bool = True) -> PutResult:
        """Copy an object inside S3 (``CopyObject``: no download), keeping its metadata and content type.

        The ``s3_extra_args`` go on the copy as on every write (a ``Tagging`` replaces the source's
        tags, as S3 requires). ``if_none_match``: create only. A HEAD first finds an existing ``dest``
        (moto and some S3-compatible stores ignore the condition on a copy), and the copy carries
        ``If-None-Match: *`` where botocore knows it, so that AWS refuses a ``dest`` created meanwhile.

        :returns: ``written=False`` when the create-only copy was refused (412): ``dest`` exists.
        :raises BetterTokenStorageError: when S3 refused the copy, naming the permission and the fix.
        """
        params: dict[str, Any] = {
            **self.extra_args.for_write(),
            "Bucket": dest.bucket,
            "Key": dest.key,
            "CopySource": {"Bucket": source.bucket, "Key": source.key},
            "MetadataDirective": "COPY",
        }
        if "Tagging" in params:
            params["TaggingDirective"] = "REPLACE"
        if if_none_match:
            if self.head(dest).found:  # hidden by a 403 (no s3:ListBucket): the copy's condition decides
                return PutResult(False)
            members = self.client.meta.service_model.operation_model("CopyObject").input_shape.members
            if "IfNoneMatch" in members:
                params["IfNoneMatch"] = "*"
        try:
            response = self.client.copy_object(**params)
        except (ClientError, BotoCoreError) as err:
            failure = classify(err)
            if if_none_match and failure.status == 412:
                return PutResult(False)
            raise self._error(err, "CopyObject", dest, failure) from err
        return PutResult(True, (response.get("CopyObjectResult") or {}).get("ETag"))

    def upload_file(
        self,
        path: str,
        location: S3Location,
        *,
        if_none_match: bool,
        content_type: str = "application/octet-stream",
    ) -> PutResult:
        """Upload a local file with the extra arguments: ``S3Hook``'s managed transfer (multipart for a
        big file, in parts of the connection's ``transfer_config_args``), never the file held whole.

        :param if_none_match: create only: ``written=False`` when the key exists (412).
        :raises BetterTokenStorageError: when S3 refused the upload, naming the permission and the fix.

        Where s3transfer cannot carry an argument (``IfNoneMatch`` before s3transfer knew it,
        ``BucketKeyEnabled``), a small file is one ``PutObject`` and a big one a multipart upload of
        our own, part by part from the file, whose ``CompleteMultipartUpload`` carries the condition.
        """
        from boto3.s3.transfer import S3Transfer

        config = self.s3_hook.transfer_config
        extra = {**self.extra_args.for_write(), "ContentType": content_type}
        if if_none_match:
            extra["IfNoneMatch"] = "*"
        try:
            if set(extra) <= set(S3Transfer.ALLOWED_UPLOAD_ARGS):
                self.client.upload_file(path, location.bucket, location.key, ExtraArgs=extra, Config=config)
            elif os.path.getsize(path) < config.multipart_threshold:
                with open(path, "rb") as body:
                    self.client.put_object(Bucket=location.bucket, Key=location.key, Body=body, **extra)
            else:
                self._multipart_upload(path, location, extra, config.multipart_chunksize)
        except (ClientError, BotoCoreError) as err:
            failure = classify(err)
            if if_none_match and failure.status == 412:
                return PutResult(False)
            raise self._error(err, "PutObject", location, failure) from err
        return PutResult(True)

    def _multipart_upload(
        self, path: str, location: S3Location, extra: dict[str, Any], part_bytes: int
    ) -> None:
        """A multipart upload, each request with the arguments it takes; aborted if it fails."""
        where = {"Bucket": location.bucket, "Key": location.key}
        upload = self.client.create_multipart_upload(**where, **self._args_of("CreateMultipartUpload", extra))
        upload_id = upload["UploadId"]
        try:
            parts = []
            with open(path, "rb") as file:
                for number, chunk in enumerate(iter(lambda: file.read(part_bytes), b""), 1):
                    part = self.client.upload_part(
                        **where,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                        **self._args_of("UploadPart", extra),
                    )
                    parts.append({"PartNumber": number, "ETag": part["ETag"]})
            self.client.complete_multipart_upload(
                **where,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **self._args_of("CompleteMultipartUpload", extra),
            )
        except BaseException:
            # What was uploaded is billed storage until aborted; the original error is the one raised.
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(**where, UploadId=upload_id)
            raise

    def _args_of(self, operation: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Those of ``args`` that the operation takes (SSE-C keys and RequestPayer go on every part)."""
        members = self.client.meta.service_model.operation_model(operation).input_shape.members
        return {name: value for name, value in args.items() if name in members}

    def head(self, location: S3Location) -> ObjectRead:
        """HEAD an object: ``FOUND`` with its fields, ``MISSING`` (404) or ``HIDDEN`` (403; see the module).

        :raises BetterTokenStorageError: for any other failure, throttling and 5xx included (after
            botocore's retries): those say nothing about whether the object is there.
        """
        return self._read("HeadObject", location, {})

    def get(
        self,
        location: S3Location,
        *,
        byte_range: str | None = None,
        if_match: str | None = None,
        max_bytes: int | None = None,
    ) -> ObjectRead:
        """GET an object's bytes, with :meth:`head`'s 403 rule.

        :param byte_range: only these bytes, e.g. ``"bytes=0-63"``.
        :param if_match: only this version (an ETag from :meth:`head`): ``CHANGED`` if it is another.
        :param max_bytes: read at most this many bytes and one more, so that the caller sees an object
            larger than it may hold without holding all of it.
        :raises BetterTokenStorageError: for any other failure.
        """
        extra = {"Range": byte_range} if byte_range else {}
        if if_match is not None:
            extra["IfMatch"] = if_match
        return self._read("GetObject", location, extra, max_bytes)

    def open(self, location: S3Location) -> tuple[ObjectRead, BinaryIO]:
        """GET an object as a stream, with :meth:`head`'s 403 rule: a table read a line at a time.

        The caller closes the stream. A missing or hidden object comes with an empty stream.

        :raises BetterTokenStorageError: for any other failure.
        """
        try:
            response = self.client.get_object(
                Bucket=location.bucket, Key=location.key, **self.extra_args.for_read()
            )
        except (ClientError, BotoCoreError) as err:
            failure = classify(err)
            if failure.status == 404 and failure.code in (None, "404", "NoSuchKey", "NotFound"):
                return ObjectRead(Presence.MISSING), io.BytesIO()
            if failure.status == 403 and failure.code in (None, "403", "AccessDenied"):
                return ObjectRead(Presence.HIDDEN), io.BytesIO()
            raise self._error(err, "GetObject", location, failure) from err
        read = ObjectRead(
            Presence.FOUND,
            etag=response.get("ETag"),
            metadata=response.get("Metadata") or {},
            content_length=response.get("ContentLength"),
            content_type=response.get("ContentType"),
        )
        return read, response["Body"]

    def _read(
        self, operation: str, location: S3Location, extra: dict[str, Any], max_bytes: int | None = None
    ) -> ObjectRead:
        request = self.client.head_object if operation == "HeadObject" else self.client.get_object
        try:
            response = request(
                Bucket=location.bucket, Key=location.key, **self.extra_args.for_read(), **extra
            )
            body = None
            if "Body" in response:
                with response["Body"] as stream:
                    body = stream.read() if max_bytes is None else stream.read(max_bytes + 1)
        except (ClientError, BotoCoreError) as err:
            failure = classify(err)
            if failure.status == 404 and failure.code in (None, "404", "NoSuchKey", "NotFound"):
                return ObjectRead(Presence.MISSING)
            if failure.status == 403 and failure.code in (None, "403", "AccessDenied"):
                return ObjectRead(Presence.HIDDEN)
            if "IfMatch" in extra and failure.status == 412:
                return ObjectRead(Presence.CHANGED)
            raise self._error(err, operation, location, failure) from err
        return ObjectRead(
            Presence.FOUND,
            etag=response.get("ETag"),
            metadata=response.get("Metadata") or {},
            content_length=response.get("ContentLength"),
            content_type=response.get("ContentType"),
            body=body,
        )

    def delete(self, location: S3Location) -> None:
        """Delete one object (``DeleteObjects``, as ``S3Hook`` does); deleting a missing key is no error.

        :raises BetterTokenStorageError: naming ``s3:DeleteObject`` when it is denied.
        """
        try:
            response = self.client.delete_objects(
                Bucket=location.bucket,
                Delete={"Objects": [{"Key": location.key}], "Quiet": True},
                **self.extra_args.for_read(),
            )
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, "DeleteObjects", location) from err
        for error in response.get("Errors", []):
            # DeleteObjects answers 200 and lists, with their codes, the keys it could not delete.
            status = 403 if error.get("Code") == "AccessDenied" else None
            answer = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}
            raise self._error(ClientError(answer, "DeleteObjects"), "DeleteObjects", location)

    def bucket(self, name: str) -> BucketAccess:
        """HEAD a bucket: it exists, it does not (404), or the role may not list it (403).

        :raises BetterTokenStorageError: for any other failure.
        """
        try:
            self.client.head_bucket(Bucket=name, **self._only("ExpectedBucketOwner"))
        except (ClientError, BotoCoreError) as err:
            failure = classify(err)
            if failure.status == 404:
                return BucketAccess.MISSING
            if failure.status == 403:
                return BucketAccess.FORBIDDEN
            raise self._error(err, "HeadBucket", S3Location(name, ""), failure) from err
        return BucketAccess.FOUND

    def list_keys(self, prefix: S3Location) -> list[str]:
        """Every key under the prefix, through paginated ``ListObjectsV2``: no request per object.

        :raises BetterTokenStorageError: naming ``s3:ListBucket`` on the bucket when it is denied.
        """
        paginator = self.client.get_paginator("list_objects_v2")
        keys: list[str] = []
        try:
            for page in paginator.paginate(
                Bucket=prefix.bucket, Prefix=prefix.key, **self.extra_args.for_read()
            ):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, "ListObjectsV2", prefix) from err
        return keys

    def list_pages(self, prefix: S3Location, start_after: str = "") -> Iterator[list[str]]:
        """The keys under the prefix that sort after ``start_after``, a page (up to 1,000) at a time,
        so that a caller who has seen enough stops listing.

        :raises BetterTokenStorageError: naming ``s3:ListBucket`` on the bucket when it is denied.
        """
        paginator = self.client.get_paginator("list_objects_v2")
        after = {"StartAfter": start_after} if start_after else {}
        try:
            for page in paginator.paginate(
                Bucket=prefix.bucket, Prefix=prefix.key, **after, **self.extra_args.for_read()
            ):
                yield [item["Key"] for item in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as err:
            raise self._error(err, "ListObjectsV2", prefix) from err

    def _only(self, *names: str) -> dict[str, Any]:
        return {name: value for name, value in self.extra_args.for_read().items() if name in names}

    def _error(
        self,
        err: ClientError | BotoCoreError,
        operation: str,
        location: S3Location,
        failure: S3Failure | None = None,
    ) -> BetterTokenStorageError:
        return storage_error(err, operation, location, self.conn_id, self.extra_args, failure=failure)
