"""``s3_extra_args``: what every S3 write of the provider adds to ``put_object``, checked before paying.

It has ``S3Hook``'s meaning (its ``extra_args``): ``ServerSideEncryption``, ``SSEKMSKeyId``, ``ACL``,
``ExpectedBucketOwner``, ``RequestPayer`` and the like. The names are checked when the DAG is parsed,
against a table that a unit test holds to botocore's ``PutObject`` input shape; the values are checked
against the S3 client's own service model before the first request, so a typo such as
``"ServerSideEncryption": "aws-kms"`` fails before anything is paid.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.protocol.templates import is_template

if TYPE_CHECKING:
    from botocore.model import ServiceModel

__all__ = ["READ_ARGS", "WRITE_ARGS", "ReadArgs", "S3ExtraArgs", "read_args_of"]

#: What a user may set: boto3's upload ``ExtraArgs`` (what ``S3Hook(extra_args=...)`` accepts) that
#: ``put_object`` takes too, less what the provider sets itself and SSE-C (refused below).
WRITE_ARGS = frozenset(
    {
        "ACL",
        "BucketKeyEnabled",
        "CacheControl",
        "ChecksumAlgorithm",
        "ContentDisposition",
        "ContentEncoding",
        "ContentLanguage",
        "ExpectedBucketOwner",
        "Expires",
        "GrantFullControl",
        "GrantRead",
        "GrantReadACP",
        "GrantWriteACP",
        "ObjectLockLegalHoldStatus",
        "ObjectLockMode",
        "ObjectLockRetainUntilDate",
        "RequestPayer",
        "SSEKMSEncryptionContext",
        "SSEKMSKeyId",
        "ServerSideEncryption",
        "StorageClass",
        "Tagging",
        "WebsiteRedirectLocation",
    }
)
#: Of those, what also goes on the HEADs, GETs, DELETEs and LISTs of the destination: without
#: ``RequestPayer`` a requester-pays bucket refuses the reads, and ``ExpectedBucketOwner`` guards them too.
READ_ARGS = frozenset({"ExpectedBucketOwner", "RequestPayer"})
#: Set by the provider on every write; a user's value would be overwritten, so it is refused.
OWN_ARGS = frozenset({"Bucket", "Key", "Body", "ContentType", "Metadata", "IfNoneMatch", "IfMatch"})
#: SSE-C needs the customer key on every later read as well, and would put a secret into the DAG.
#: The read arguments as sorted (name, value) pairs: hashable, so a store can be kept for them.
ReadArgs = tuple[tuple[str, str], ...]
SSE_C_ARGS = frozenset({"SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5"})
KMS_ENCRYPTIONS = ("aws:kms", "aws:kms:dsse")
#: The line a user copies when a bucket policy requires encryption.
KMS_EXAMPLE = 's3_extra_args={"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "<KMS key ARN>"}'


@dataclass(frozen=True)
class S3ExtraArgs:
    """Checked ``s3_extra_args``: every name known, SSE-C refused, and a KMS key only with KMS encryption."""

    values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: object, what: str = "s3_extra_args") -> S3ExtraArgs:
        """Check the names (and what can be checked of the values without botocore's model).

        Values that are still Jinja templates are left for after rendering.

        :raises BetterTokenInputError: naming the argument and what to write instead.
        """
        if isinstance(value, S3ExtraArgs):
            return value
        if value is None:
            return cls({})
        if not isinstance(value, Mapping):
            raise BetterTokenInputError(
                f"{what} must be a dict of put_object arguments such as {KMS_EXAMPLE}, got {value!r}"
            )
        names = set(value)
        if not all(isinstance(name, str) for name in names):
            raise BetterTokenInputError(f"{what} keys must be strings, got {sorted(map(repr, names))}")
        if names & OWN_ARGS:
            raise BetterTokenInputError(
                f"{what} must not set {sorted(names & OWN_ARGS)}: the operators set them on every write"
            )
        if names & SSE_C_ARGS:
            raise BetterTokenInputError(
                f"{what} must not set {sorted(names & SSE_C_ARGS)}: SSE-C needs the customer key on every "
                "read as well and would put a secret into the DAG; use ServerSideEncryption='aws:kms' "
                "(with SSEKMSKeyId) or 'AES256'"
            )
        unknown = sorted(names - WRITE_ARGS)
        if unknown:
            raise BetterTokenInputError(
                f"{what} has unknown put_object arguments {unknown}; allowed: {sorted(WRITE_ARGS)}"
            )
        encryption = value.get("ServerSideEncryption")
        if "SSEKMSKeyId" in value and not is_template(encryption) and encryption not in KMS_ENCRYPTIONS:
            raise BetterTokenInputError(
                f"{what} sets SSEKMSKeyId without ServerSideEncryption='aws:kms' (or 'aws:kms:dsse'), "
                f"which S3 refuses; write {KMS_EXAMPLE}"
            )
        return cls(dict(value))

    @classmethod
    def check_literal(cls, value: object, what: str = "s3_extra_args") -> None:
        """In an operator's constructor: check what is known before templating, so a typo fails the DAG.

        A value that is one template string as a whole is left for after rendering.
        """
        if not is_template(value):
            cls.parse(value, what)

    def check_values(self, service_model: ServiceModel, what: str = "s3_extra_args") -> None:
        """Check the rendered values against the S3 client's model: types, and enums such as ``ACL``.

        :raises BetterTokenInputError: naming the argument, the value and what is allowed.
        """
        from botocore.exceptions import ParamValidationError
        from botocore.validate import validate_parameters

        shape = service_model.operation_model("PutObject").input_shape
        for name, value in self.values.items():
            allowed = getattr(shape.members[name], "enum", None)
            if allowed and value not in allowed:
                raise BetterTokenInputError(
                    f"{what} {name}={value!r} is not a value S3 knows; use one of: {', '.join(allowed)}"
                )
        try:
            validate_parameters({"Bucket": "bucket", "Key": "key", **self.values}, shape)
        except ParamValidationError as err:
            raise BetterTokenInputError(f"{what} is not valid for put_object: {err}") from err

    def for_write(self) -> dict[str, Any]:
        """The arguments for ``put_object``."""
        return dict(self.values)

    def for_read(self) -> dict[str, Any]:
        """The arguments that HEAD, GET, DELETE and LIST requests on the destination take as well."""
        return {name: value for name, value in self.values.items() if name in READ_ARGS}

    @property
    def encryption(self) -> str | None:
        return self.values.get("ServerSideEncryption")

    def describe(self) -> str:
        """The arguments as written, for error messages (they hold no secret: SSE-C is refused)."""
        return json.dumps(dict(self.values), default=str, sort_keys=True)


def read_args_of(value: object) -> ReadArgs | None:
    """The read arguments (:meth:`S3ExtraArgs.for_read`) of an ``s3_extra_args`` value, sorted.

    :return: None when the value is not checked arguments (a template, or a rendered value Airflow cut
        short), so that the caller falls back on another trusted record.
    """
    try:
        read = S3ExtraArgs.parse(value).for_read()
    except BetterTokenInputError:
        return None
    if not all(isinstance(item, str) and not is_template(item) for item in read.values()):
        return None
    return tuple(sorted(read.items()))
