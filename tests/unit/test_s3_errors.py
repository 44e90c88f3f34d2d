"""What an S3 failure means: only throttling, 5xx and connection errors are retried; every message
names the botocore class, the permission and the fix."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
    SSLError,
)

from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.s3_errors import classify, hidden_object_text, storage_error
from airflow_bettertoken.storage.s3_extra_args import S3ExtraArgs

OUTPUT = S3Location("my-out", "edited/mug.png")
KMS = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "arn:aws:kms:us-east-1:123456789012:key/k"}


def client_error(status: int, code: str, operation: str = "PutObject", message: str = "m") -> ClientError:
    answer = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": 2},
    }
    return ClientError(answer, operation)


def _error_id(error: Exception) -> str:
    return error.response["Error"]["Code"] if isinstance(error, ClientError) else type(error).__name__


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (client_error(503, "SlowDown"), True),
        (client_error(500, "InternalError"), True),
        (client_error(429, "TooManyRequests"), True),
        (client_error(400, "RequestTimeout"), True),
        (client_error(409, "ConditionalRequestConflict"), True),
        (client_error(403, "AccessDenied"), False),
        (client_error(400, "InvalidArgument"), False),
        (client_error(404, "NoSuchBucket"), False),
        (client_error(412, "PreconditionFailed"), False),
        (client_error(501, "NotImplemented"), False),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), True),
        (ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), True),
        (NoCredentialsError(), False),
        (CredentialRetrievalError(provider="sso", error_msg="expired"), False),
        (ParamValidationError(report="Invalid type for parameter Body"), False),
        (SSLError(endpoint_url="https://s3", error="certificate verify failed"), False),
    ],
    ids=lambda v: str(v) if isinstance(v, bool) else _error_id(v),
)
def test_only_throttling_5xx_and_connection_errors_are_retryable(error, retryable):
    assert classify(error).retryable is retryable


def test_botocores_own_attempts_are_counted():
    assert classify(client_error(503, "SlowDown")).attempts == 3


def message(error, operation="PutObject", location=OUTPUT, extra=None) -> str:
    return str(storage_error(error, operation, location, "aws_default", S3ExtraArgs.parse(extra)))


def test_access_denied_on_a_put_names_the_permission_and_the_encryption_fix():
    text = message(client_error(403, "AccessDenied", message="User: arn:... is not authorized"))
    assert (
        "S3 PutObject on s3://my-out/edited/mug.png failed (403 AccessDenied, botocore ClientError)" in text
    )
    assert "not retried" in text
    assert "needs s3:PutObject on arn:aws:s3:::my-out/edited/mug.png" in text
    assert "a bucket policy may require server-side encryption" in text
    assert 's3_extra_args={"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "<KMS key ARN>"}' in text


def test_access_denied_with_kms_set_names_the_kms_permission_instead():
    text = message(client_error(403, "AccessDenied"), extra=KMS)
    assert f"kms:GenerateDataKey on {KMS['SSEKMSKeyId']}" in text
    assert "may require other encryption settings than s3_extra_args gives" in text
    assert "<KMS key ARN>" not in text


@pytest.mark.parametrize(
    ("operation", "location", "permission"),
    [
        ("ListObjectsV2", S3Location("my-in", "catalog/"), "s3:ListBucket on arn:aws:s3:::my-in"),
        ("HeadBucket", S3Location("my-out", ""), "s3:ListBucket on arn:aws:s3:::my-out"),
        ("GetObject", S3Location("my-in", "a.png"), "s3:GetObject on arn:aws:s3:::my-in/a.png"),
        ("DeleteObjects", S3Location("my-out", "p"), "s3:DeleteObject on arn:aws:s3:::my-out/p"),
    ],
    ids=["list", "head-bucket", "get", "delete"],
)
def test_access_denied_names_each_requests_permission(operation, location, permission):
    text = message(client_error(403, "AccessDenied", operation), operation, location)
    assert f"needs {permission}" in text
    assert "server-side encryption" not in text  # only a write can be refused for that


@pytest.mark.parametrize(
    ("error", "names"),
    [
        (NoCredentialsError(), ["botocore NoCredentialsError", "found no usable AWS credentials"]),
        (
            ParamValidationError(report="Invalid type for parameter Body"),
            ["botocore ParamValidationError", "check s3_extra_args"],
        ),
        (client_error(404, "NoSuchBucket"), ["404 NoSuchBucket", "bucket 'my-out' does not exist"]),
        (client_error(501, "NotImplemented"), ["does not implement this request", "conditional writes"]),
    ],
    ids=["no-credentials", "param-validation", "no-bucket", "not-implemented"],
)
def test_errors_that_cannot_heal_say_so_and_what_to_do(error, names):
    text = message(error)
    assert "Waiting does not fix this, so it was not retried" in text
    for name in names:
        assert name in text


def test_a_retryable_failure_says_botocore_retried_it_as_the_connection_configures():
    error = storage_error(client_error(503, "SlowDown"), "PutObject", OUTPUT, "aws_default", S3ExtraArgs())
    assert error.retryable
    assert "Retried after 3 attempt(s) by botocore, as the connection configures" in str(error)


def test_a_403_for_an_object_names_both_causes():
    text = hidden_object_text("HeadObject", OUTPUT, "aws_default")
    assert "s3:ListBucket on arn:aws:s3:::my-out" in text
    assert "s3:GetObject on arn:aws:s3:::my-out/edited/mug.png" in text
