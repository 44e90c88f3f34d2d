"""What an S3 failure means: whether waiting can heal it, and what the user should check.

Pure functions of botocore's exceptions, tested by table (``tests/unit/test_s3_errors.py``). Only
throttling, 5xx answers and connection errors are worth another try; anything else (a denied request,
missing credentials, an invalid parameter) fails at once, with the botocore class named.
"""

from __future__ import annotations

from dataclasses import dataclass

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    SSLError,
)

from airflow_bettertoken.exceptions import BetterTokenStorageError
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.s3_extra_args import KMS_ENCRYPTIONS, KMS_EXAMPLE, S3ExtraArgs

__all__ = ["S3Failure", "classify", "hidden_object_text", "storage_error"]

# Error codes that mean "slow down" or "try again", whatever the status (botocore's standard mode
# retries the same ones). RequestTimeout comes as a 400; ConditionalRequestConflict as a 409.
THROTTLING_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "PriorRequestNotComplete",
    }
)
TRANSIENT_CODES = frozenset({"RequestTimeout", "RequestTimeoutException", "ConditionalRequestConflict"})

#: The IAM action each request needs, and whether it is granted on the bucket or on the object.
PERMISSIONS = {
    "PutObject": ("s3:PutObject", "object"),
    # A copy also needs s3:GetObject on its source; the error names the write, which is refused more often.
    "CopyObject": ("s3:PutObject", "object"),
    "HeadObject": ("s3:GetObject", "object"),
    "GetObject": ("s3:GetObject", "object"),
    "DeleteObjects": ("s3:DeleteObject", "object"),
    "HeadBucket": ("s3:ListBucket", "bucket"),
    "ListObjectsV2": ("s3:ListBucket", "bucket"),
}


@dataclass(frozen=True)
class S3Failure:
    """One failed S3 request, as far as the decision to retry it goes.

    :param retryable: throttling, a 5xx answer or a connection error: waiting may heal it.
    :param status: the HTTP status, when S3 answered.
    :param code: S3's error code (``AccessDenied``, ``SlowDown``; a HEAD's answer has only its status).
    :param botocore_class: the exception's class, named in every message.
    :param message: S3's message or botocore's text.
    :param attempts: how many attempts botocore itself made, when it says so.
    """

    retryable: bool
    status: int | None
    code: str | None
    botocore_class: str
    message: str
    attempts: int | None = None


def classify(err: ClientError | BotoCoreError) -> S3Failure:
    """Whether waiting can heal this failure; everything but throttling, 5xx and connections cannot."""
    name = type(err).__name__
    if isinstance(err, ClientError):
        # botocore makes a subclass per modeled error code (AccessDenied, NoSuchKey): name what users catch.
        name = ClientError.__name__
        error = err.response.get("Error", {})
        meta = err.response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode")
        code = error.get("Code")
        retries = meta.get("RetryAttempts")
        retryable = (
            code in THROTTLING_CODES or code in TRANSIENT_CODES or (status or 0) in (429, 500, 502, 503, 504)
        )
        return S3Failure(
            retryable,
            status,
            code,
            name,
            error.get("Message") or str(err),
            None if retries is None else retries + 1,
        )
    # A certificate that fails to verify does not heal; other connection errors and timeouts may.
    retryable = isinstance(err, (ConnectionError, HTTPClientError)) and not isinstance(err, SSLError)
    return S3Failure(retryable, None, None, name, str(err))


def _arn(location: S3Location, scope: str) -> str:
    return f"arn:aws:s3:::{location.bucket}" + (f"/{location.key}" if scope == "object" else "")


def _access_denied_advice(operation: str, location: S3Location, conn: str, extra: S3ExtraArgs) -> str:
    action, scope = PERMISSIONS.get(operation, (f"s3:{operation}", "object"))
    needs = [f"{action} on {_arn(location, scope)}"]
    if operation == "PutObject":
        if any(name == "ACL" or name.startswith("Grant") for name in extra.values):
            needs.append("s3:PutObjectAcl (s3_extra_args sets an ACL)")
        if "Tagging" in extra.values:
            needs.append("s3:PutObjectTagging (s3_extra_args sets Tagging)")
        if extra.encryption in KMS_ENCRYPTIONS:
            key = extra.values.get("SSEKMSKeyId") or "the bucket's default KMS key"
            needs.append(f"kms:GenerateDataKey on {key}")
    text = f"connection {conn!r} needs {' and '.join(needs)}"
    if "ExpectedBucketOwner" in extra.values:
        text += f", and the bucket must belong to ExpectedBucketOwner={extra.values['ExpectedBucketOwner']!r}"
    if operation != "PutObject":
        return text
    if extra.encryption is None:
        return (
            f"{text}. If it has that, a bucket policy may require server-side encryption (a common "
            f"'deny unencrypted uploads' rule): pass {KMS_EXAMPLE} (or "
            '{"ServerSideEncryption": "AES256"}) to the operators, or DAG-wide in default_args'
        )
    return (
        f"{text}. If it has that, the bucket policy may require other encryption settings than "
        f"s3_extra_args gives ({extra.describe()}): compare them with the policy's conditions"
    )


def _advice(failure: S3Failure, operation: str, location: S3Location, conn: str, extra: S3ExtraArgs) -> str:
    """What the user should check for this failure; an empty string when there is nothing to add."""
    code, name = failure.code or "", failure.botocore_class
    if name in (
        NoCredentialsError.__name__,
        PartialCredentialsError.__name__,
        CredentialRetrievalError.__name__,
    ):
        return (
            f"connection {conn!r} found no usable AWS credentials: set its login and password (access key "
            "id and secret), a role_arn in its extra, or credentials in the worker's environment"
        )
    if name == NoRegionError.__name__:
        return f"set region_name in the extra of connection {conn!r}"
    if name == ParamValidationError.__name__:
        return f"the request's parameters are invalid; check s3_extra_args ({extra.describe()})"
    if name == SSLError.__name__:
        return f"check TLS: the verify setting or CA bundle of connection {conn!r}, or its endpoint_url"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "TokenRefreshRequired"):
        return f"the credentials of connection {conn!r} are wrong or expired"
    if code in ("NoSuchBucket",) or (failure.status == 404 and operation in ("HeadBucket", "ListObjectsV2")):
        return f"the bucket {location.bucket!r} does not exist; create it or fix the URI"
    if code == "AccessDenied" or failure.status == 403:
        return _access_denied_advice(operation, location, conn, extra)
    if code == "NotImplemented" or failure.status == 501:
        return (
            "the store does not implement this request; S3-compatible stores without conditional writes "
            "(If-None-Match, If-Match) cannot keep the create-only guarantee"
        )
    if code == "InvalidArgument":
        return f"check s3_extra_args ({extra.describe()})"
    return ""


def storage_error(
    err: ClientError | BotoCoreError,
    operation: str,
    location: S3Location,
    conn: str | None,
    extra: S3ExtraArgs,
    *,
    failure: S3Failure | None = None,
) -> BetterTokenStorageError:
    """The error a user reads: the request, S3's answer with the botocore class, and what to check."""
    failure = failure or classify(err)
    answer = " ".join(str(part) for part in (failure.status, failure.code) if part)
    what = f"{answer}, botocore {failure.botocore_class}" if answer else f"botocore {failure.botocore_class}"
    said = failure.message.rstrip(". ")
    text = f"S3 {operation} on {location.uri} failed ({what}) with connection {conn!r}: {said}"
    if failure.retryable:
        tries = f"after {failure.attempts} attempt(s) by botocore" if failure.attempts else "by botocore"
        text += f". Retried {tries}, as the connection configures botocore's retries"
    else:
        text += ". Waiting does not fix this, so it was not retried"
    advice = _advice(failure, operation, location, conn or "aws_default", extra)
    if advice:
        text += f". {advice[0].upper()}{advice[1:]}"
    return BetterTokenStorageError(
        text,
        operation=operation,
        uri=location.uri,
        status=failure.status,
        code=failure.code,
        botocore_class=failure.botocore_class,
        retryable=failure.retryable,
    )


def hidden_object_text(operation: str, location: S3Location, conn: str | None) -> str:
    """Why S3 answers 403 for an object: a missing key read without s3:ListBucket, or no s3:GetObject."""
    return (
        f"S3 answered 403 to {operation} of {location.uri} (connection {conn!r}). AWS answers 403 instead "
        f"of 404 for a key that does not exist when the role lacks s3:ListBucket on "
        f"arn:aws:s3:::{location.bucket}; otherwise the role lacks s3:GetObject on "
        f"arn:aws:s3:::{location.bucket}/{location.key} (or S3 refuses the connection's credentials: "
        "a HEAD's 403 carries no reason)"
    )
