"""``s3_extra_args``: checked names at parse time, checked values against botocore's model, DAG-wide."""

from __future__ import annotations

import botocore.session
import pendulum
import pytest
from boto3.s3.transfer import S3Transfer

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator
from airflow_bettertoken.operators.manifest import BetterTokenManifestOperator
from airflow_bettertoken.operators.preflight import BetterTokenPreflightOperator
from airflow_bettertoken.storage.s3_extra_args import OWN_ARGS, READ_ARGS, SSE_C_ARGS, WRITE_ARGS, S3ExtraArgs

KMS = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "arn:aws:kms:us-east-1:123456789012:key/k"}


@pytest.fixture(scope="module")
def s3_model():
    return botocore.session.get_session().get_service_model("s3")


def test_the_allowed_names_are_what_put_object_and_s3hook_both_accept(s3_model):
    put_object = set(s3_model.operation_model("PutObject").input_shape.members)
    assert put_object >= WRITE_ARGS
    # S3Hook passes its extra_args to boto3's uploads; the names mean the same here.
    assert set(S3Transfer.ALLOWED_UPLOAD_ARGS) >= WRITE_ARGS - {"BucketKeyEnabled"}
    assert put_object >= OWN_ARGS | SSE_C_ARGS
    assert not WRITE_ARGS & (OWN_ARGS | SSE_C_ARGS)


@pytest.mark.parametrize("operation", ["HeadObject", "GetObject", "ListObjectsV2", "DeleteObjects"])
def test_the_read_arguments_are_taken_by_every_read_of_the_destination(s3_model, operation):
    assert set(s3_model.operation_model(operation).input_shape.members) >= READ_ARGS


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"ServerSideEncription": "aws:kms"}, "unknown put_object arguments ['ServerSideEncription']"),
        ({"ContentType": "image/jpeg"}, "must not set ['ContentType']: the operators set them"),
        ({"IfNoneMatch": "*"}, "must not set ['IfNoneMatch']"),
        ({"SSECustomerKey": "secret"}, "SSE-C needs the customer key on every read"),
        ({"SSEKMSKeyId": "arn:aws:kms:k"}, "SSEKMSKeyId without ServerSideEncryption='aws:kms'"),
        ({"ServerSideEncryption": "AES256", "SSEKMSKeyId": "k"}, "SSEKMSKeyId without"),
        ("aws:kms", "must be a dict of put_object arguments"),
    ],
    ids=[
        "typo",
        "own-content-type",
        "own-condition",
        "sse-c",
        "kms-key-alone",
        "kms-key-with-aes",
        "not-a-dict",
    ],
)
def test_bad_names_are_refused_naming_the_fix(value, message):
    with pytest.raises(BetterTokenInputError, match="s3_extra_args") as info:
        S3ExtraArgs.parse(value)
    assert message in str(info.value)


def test_templates_are_left_for_after_rendering():
    S3ExtraArgs.check_literal("{{ var.json.s3_extra_args }}")
    S3ExtraArgs.check_literal(
        {"ServerSideEncryption": "{{ var.value.sse }}", "SSEKMSKeyId": "{{ var.value.k }}"}
    )
    with pytest.raises(BetterTokenInputError, match="unknown put_object arguments"):
        S3ExtraArgs.check_literal({"SSEKmsKeyId": "{{ var.value.k }}"})


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"ServerSideEncryption": "aws-kms"}, "ServerSideEncryption='aws-kms' is not a value S3 knows"),
        ({"ACL": "public"}, "ACL='public' is not a value S3 knows; use one of: private"),
        ({"BucketKeyEnabled": "yes"}, "Invalid type for parameter BucketKeyEnabled"),
        ({"CacheControl": 3600}, "Invalid type for parameter CacheControl"),
    ],
    ids=["sse-typo", "acl", "bool", "string"],
)
def test_values_are_checked_against_the_s3_model(s3_model, value, message):
    with pytest.raises(BetterTokenInputError, match="s3_extra_args") as info:
        S3ExtraArgs.parse(value).check_values(s3_model)
    assert message in str(info.value)


def test_good_values_pass_and_split_into_write_and_read_arguments(s3_model):
    args = S3ExtraArgs.parse({**KMS, "BucketKeyEnabled": True, "ExpectedBucketOwner": "123456789012"})
    args.check_values(s3_model)
    assert args.for_write() == {**KMS, "BucketKeyEnabled": True, "ExpectedBucketOwner": "123456789012"}
    assert args.for_read() == {"ExpectedBucketOwner": "123456789012"}


def _operators(**kwargs):
    return [
        lambda: BetterTokenImageEditOperator(
            task_id="e", prompt="p", source="s3://a/x.png", dest="s3://b/out/", **kwargs
        ),
        lambda: BetterTokenListImagesOperator(
            task_id="l", source_prefix="s3://a/", dest_prefix="s3://b/", **kwargs
        ),
        lambda: BetterTokenPreflightOperator(task_id="p", dest_prefix="s3://b/", **kwargs),
        lambda: BetterTokenManifestOperator(
            task_id="m", edits=[], results=[], manifest_uri="s3://b/m.json", **kwargs
        ),
    ]


@pytest.mark.parametrize(
    "build", _operators(s3_extra_args={"SSEKMSKeyID": "k"}), ids=["edit", "list", "preflight", "manifest"]
)
def test_every_operator_that_writes_refuses_a_typo_when_the_dag_is_parsed(build):
    with pytest.raises(BetterTokenInputError, match=r"unknown put_object arguments \['SSEKMSKeyID'\]"):
        build()


def test_default_args_set_them_dag_wide_mapped_edits_included():
    from airflow.sdk import DAG

    with DAG(
        "kms", schedule=None, start_date=pendulum.datetime(2026, 1, 1), default_args={"s3_extra_args": KMS}
    ):
        operators = [build() for build in _operators()]
        listing = operators[1]
        mapped = BetterTokenImageEditOperator.partial(task_id="edits", prompt="p").expand_kwargs(
            listing.output
        )
    assert [op.s3_extra_args for op in operators] == [KMS] * 4
    assert mapped.unmap({"source": "s3://a/x.png", "dest": "s3://b/out/"}).s3_extra_args == KMS


def test_a_mapped_edit_refuses_a_typo_when_the_dag_is_parsed():
    with pytest.raises(BetterTokenInputError, match="unknown put_object arguments"):
        BetterTokenImageEditOperator.partial(
            task_id="edits", prompt="p", s3_extra_args={"Encryption": "aws:kms"}
        )
