"""S3 as companies run it, played by a proxy in front of moto that answers as AWS does.

moto applies no bucket policy and no IAM, and always keeps conditional writes. The proxy
(``s3_fault_proxy.py``) plays a bucket policy that requires SSE-KMS, a least-privilege role without
``s3:ListBucket``, and an older S3-compatible store that ignores ``If-None-Match``. Each case says
what the user reads, what was paid, and what was stored.
"""

from __future__ import annotations

import json
import logging

import pendulum
import pytest
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_bettertoken.exceptions import BetterTokenStorageError
from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator
from airflow_bettertoken.operators.manifest import BetterTokenManifestOperator
from airflow_bettertoken.operators.preflight import BetterTokenPreflightOperator
from airflow_bettertoken.protocol.png import verify_png
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.objects import ImageStore, UploadFailed
from airflow_bettertoken.storage.s3_io import S3IO
from airflow_bettertoken.testing.samples import sample_image
from tests.virtual_time import VirtualTime

KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
KMS = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": KMS_KEY}
PNG = sample_image(96, 64)


@pytest.fixture
def catalog(s3, buckets):
    for index in range(3):
        s3.put_object(
            Bucket=buckets.src, Key=f"catalog/item-{index}.jpg", Body=sample_image(64, 48, "jpg", index)
        )
    return buckets


def objects(s3, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def listing(buckets, **kwargs) -> BetterTokenListImagesOperator:
    return BetterTokenListImagesOperator(
        task_id="list_images",
        source_prefix=f"s3://{buckets.src}/catalog/",
        dest_prefix=f"s3://{buckets.out}/edited/",
        **{"aws_conn_id": "aws_faulty", **kwargs},
    )


def error_text(run) -> str:
    with pytest.raises(Exception) as info:
        run()
    return str(info.value)


# A bucket policy that denies unencrypted uploads.


def test_a_bucket_that_requires_kms_stops_the_listing_before_paying_and_says_how_to_fix_it(
    s3, catalog, emulator, faulty_s3, task_context
):
    faulty_s3.require_kms = True

    message = error_text(lambda: listing(catalog).execute(task_context))

    assert message.startswith("Preflight: S3 PutObject on s3://")
    assert "(403 AccessDenied, botocore ClientError)" in message
    assert "explicit deny in a resource-based policy" in message  # S3's own words
    assert f"needs s3:PutObject on arn:aws:s3:::{catalog.out}/edited/.bettertoken-preflight" in message
    assert "a bucket policy may require server-side encryption" in message
    assert 's3_extra_args={"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "<KMS key ARN>"}' in message
    assert emulator.stats()["posts"] == 0
    assert objects(s3, catalog.out) == []


def test_with_s3_extra_args_dag_wide_every_object_is_stored_with_kms(
    s3, catalog, emulator, faulty_s3, task_context
):
    from airflow.sdk import DAG

    faulty_s3.require_kms = True
    defaults = {"s3_extra_args": KMS, "aws_conn_id": "aws_faulty"}
    with DAG("kms", schedule=None, start_date=pendulum.datetime(2026, 1, 1), default_args=defaults):
        edits = listing(catalog).execute(task_context)
        results = [
            BetterTokenImageEditOperator(task_id=f"edit_{n}", prompt="p", **edit).execute(task_context)
            for n, edit in enumerate(edits)
        ]
        manifest = BetterTokenManifestOperator(
            task_id="write_manifest",
            edits=edits,
            results=results,
            manifest_uri=f"s3://{catalog.out}/edited/_manifest.json",
        )
        manifest.execute(task_context)

    assert emulator.stats()["paid"] == 3
    stored = objects(s3, catalog.out)
    assert stored == [
        # The chain's record and the spend ledger's are written with the same arguments.
        "_bettertoken/chains/test_dag/manual__test.json",
        "_bettertoken/ledger/edited/item-0.png.json",
        "_bettertoken/ledger/edited/item-1.png.json",
        "_bettertoken/ledger/edited/item-2.png.json",
        "edited/_manifest.json",
        "edited/_manifests/manual__test.json",
        "edited/item-0.png",
        "edited/item-1.png",
        "edited/item-2.png",
    ]
    for key in stored:
        head = s3.head_object(Bucket=catalog.out, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", KMS_KEY), key
    assert verify_png(s3.get_object(Bucket=catalog.out, Key="edited/item-0.png")["Body"].read())


def test_a_single_edit_into_a_kms_bucket_fails_before_paying_and_names_the_fix(
    s3, buckets, emulator, faulty_s3, task_context, tmp_path
):
    """Without the listing's preflight, the spend ledger's first write, made before the paid call,
    meets the policy: the edit fails for good with the fix, and nothing is paid."""
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    faulty_s3.require_kms = True
    op = {"prompt": "p", "source": f"s3://{buckets.src}/a.png", "dest": f"s3://{buckets.out}/a.png"}
    edit = BetterTokenImageEditOperator(
        task_id="edit", aws_conn_id="aws_faulty", spill_dir=str(tmp_path), **op
    )

    with pytest.raises(AirflowFailException) as info:
        edit.execute(task_context)
    assert "Waiting does not fix this, so it was not retried" in str(info.value)
    assert "a bucket policy may require server-side encryption" in str(info.value)
    assert emulator.stats()["posts"] == 0

    fixed = BetterTokenImageEditOperator(
        task_id="edit", aws_conn_id="aws_faulty", spill_dir=str(tmp_path), s3_extra_args=KMS, **op
    ).execute(task_context)
    assert (fixed["skipped"], emulator.stats()["paid"]) == (False, 1)
    assert s3.head_object(Bucket=buckets.out, Key="a.png")["ServerSideEncryption"] == "aws:kms"


def test_a_role_that_may_not_write_the_ledger_fails_the_listing_before_paying(
    s3, catalog, emulator, faulty_s3, task_context
):
    """A policy that grants the outputs' prefix but not _bettertoken/ would fail every edit, one by one."""
    faulty_s3.fail_puts, faulty_s3.fail_with_access_denied = -1, True
    faulty_s3.fails_key = lambda key: key.startswith("_bettertoken/")

    message = error_text(lambda: listing(catalog).execute(task_context))

    assert f"needs s3:PutObject on arn:aws:s3:::{catalog.out}/_bettertoken/spill/edited/" in message
    assert emulator.stats()["posts"] == 0
    assert objects(s3, catalog.out) == []


# A least-privilege role without s3:ListBucket.


def test_without_list_bucket_an_edit_goes_on_and_its_rerun_still_pays_nothing(
    s3, buckets, emulator, faulty_s3, task_context, caplog, capfd
):
    caplog.set_level(logging.INFO, logger="airflow_bettertoken")
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    faulty_s3.no_list_bucket = True
    op = {"prompt": "p", "source": f"s3://{buckets.src}/a.png", "dest": f"s3://{buckets.out}/a.png"}

    first = BetterTokenImageEditOperator(task_id="edit", aws_conn_id="aws_faulty", **op).execute(task_context)
    logged = caplog.text + "".join(capfd.readouterr())
    rerun = BetterTokenImageEditOperator(task_id="edit", aws_conn_id="aws_faulty", **op).execute(task_context)

    # The bucket's HEAD was answered 403, and the bucket was not called missing (the edit went on).
    assert ("HEAD", f"/{buckets.out}") in faulty_s3.requests
    assert (
        f"HeadBucket of {buckets.out!r}: connection 'aws_faulty' lacks s3:ListBucket on it; going on"
        in logged
    )
    assert "S3 answered 403 to HeadObject" in logged and "taking it as missing" in logged
    assert (first["skipped"], rerun["skipped"]) == (False, True)
    assert emulator.stats()["paid"] == 1


def test_without_list_bucket_a_missing_source_fails_before_paying_naming_both_permissions(
    buckets, emulator, faulty_s3, task_context
):
    faulty_s3.no_list_bucket = True
    edit = BetterTokenImageEditOperator(
        task_id="edit",
        prompt="p",
        source=f"s3://{buckets.src}/missing.png",
        dest=f"s3://{buckets.out}/edited/",
        aws_conn_id="aws_faulty",
    )

    with pytest.raises(AirflowFailException) as info:
        edit.execute(task_context)

    message = str(info.value)
    assert f"s3:ListBucket on arn:aws:s3:::{buckets.src}" in message
    assert f"s3:GetObject on arn:aws:s3:::{buckets.src}/missing.png" in message
    assert "An error occurred (403)" not in message  # never botocore's bare text
    assert emulator.stats()["posts"] == 0


def test_without_list_bucket_the_listing_fails_before_paying_naming_list_bucket(
    s3, catalog, emulator, faulty_s3, task_context
):
    faulty_s3.no_list_bucket = True

    message = error_text(lambda: listing(catalog).execute(task_context))

    assert f"S3 ListObjectsV2 on s3://{catalog.src}/catalog/ failed (403 AccessDenied" in message
    assert f"needs s3:ListBucket on arn:aws:s3:::{catalog.src}" in message
    assert "does not exist" not in message
    assert emulator.stats()["posts"] == 0
    assert objects(s3, catalog.out) == []  # the probe was deleted again


def test_without_list_bucket_the_preflight_passes_and_says_what_is_missing(
    buckets, emulator, faulty_s3, task_context
):
    faulty_s3.no_list_bucket = True

    check = BetterTokenPreflightOperator(
        task_id="preflight", dest_prefix=f"s3://{buckets.out}/edited/", aws_conn_id="aws_faulty"
    ).execute(task_context)

    assert (check["can_list"], check["conditional_writes"]) == (False, True)
    [warning] = check["warnings"]
    assert f"s3:ListBucket on arn:aws:s3:::{buckets.out}" in warning


# A store that ignores If-None-Match.


def test_a_store_that_ignores_conditional_writes_is_found_and_recorded_in_the_manifest(
    s3, catalog, emulator, faulty_s3, sandbox, monkeypatch, airflow_db
):
    from tests.airflow_versions import load_dag
    from tests.integration.test_pipelines import run_manifests

    faulty_s3.ignore_conditional_writes = True
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(sandbox.aws_connection(faulty_s3.endpoint)))

    run = load_dag("bettertoken_backfill").test(
        run_conf={"in_bucket": catalog.src, "out_bucket": catalog.out}
    )

    assert run.state == "success"  # recorded and warned about, not refused
    store = run_manifests(s3, catalog.out, "catalog-edited/")[run.run_id]["findings"]["store"]
    assert (store["conditional_writes"], store["can_list"]) == (False, True)
    [warning] = store["warnings"]
    assert "ignores conditional writes" in warning
    assert "duplicates and overwrites are possible" in warning


def test_the_listing_warns_of_a_store_that_ignores_conditional_writes_in_its_log(
    catalog, emulator, faulty_s3, task_context, capfd
):
    faulty_s3.ignore_conditional_writes = True
    listing(catalog).execute(task_context)
    logged = "".join(capfd.readouterr())
    assert "Preflight: s3://" in logged and "ignores conditional writes" in logged
    assert task_context["ti"].xcoms["findings"]["store"]["conditional_writes"] is False


def test_a_store_that_keeps_conditional_writes_records_that_too(buckets, emulator, faulty_s3, task_context):
    check = BetterTokenPreflightOperator(
        task_id="preflight", dest_prefix=f"s3://{buckets.out}/edited/", aws_conn_id="aws_faulty"
    ).execute(task_context)
    assert (check["conditional_writes"], check["can_list"], check["warnings"]) == (True, True, [])


# Errors that waiting cannot fix fail at once; botocore's own retries are said, not hidden.


@pytest.fixture
def no_credentials(sandbox, monkeypatch) -> str:
    """An AWS connection with no credentials anywhere: not in it, the environment or ~/.aws."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    conn = {"conn_type": "aws", "extra": {"endpoint_url": sandbox.s3_endpoint, "region_name": "us-east-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_NOCREDS", json.dumps(conn))
    return "aws_nocreds"


def test_no_credentials_fail_the_edit_at_once_before_paying(
    s3, buckets, emulator, task_context, no_credentials
):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    edit = BetterTokenImageEditOperator(
        task_id="edit",
        prompt="p",
        source=f"s3://{buckets.src}/a.png",
        dest=f"s3://{buckets.out}/edited/",
        aws_conn_id=no_credentials,
    )
    with pytest.raises(AirflowFailException, match="botocore NoCredentialsError") as info:
        edit.execute(task_context)
    assert "not retried" in str(info.value) and "found no usable AWS credentials" in str(info.value)
    assert emulator.stats()["posts"] == 0


def test_an_upload_that_cannot_heal_fails_at_once(buckets, emulator, no_credentials):
    clock = VirtualTime()
    store = ImageStore(S3Hook(aws_conn_id=no_credentials), clock.timing())
    with pytest.raises(UploadFailed, match="NoCredentialsError"):
        store.put_png(S3Location(buckets.out, "a.png"), PNG, {}, create_only=True)
    assert clock.waits == []  # it once waited two minutes, then spilled


def test_an_invalid_parameter_is_not_retried_either(buckets, emulator):
    clock = VirtualTime()
    io = S3IO(S3Hook(aws_conn_id="aws_default"), timing=clock.timing())
    with pytest.raises(BetterTokenStorageError, match="botocore ParamValidationError") as info:
        io.put(S3Location(buckets.out, "a.png"), object())  # type: ignore[arg-type]
    assert not info.value.retryable
    assert clock.waits == []


def test_s3_clients_use_botocores_standard_retries_unless_the_connection_chooses(faulty_s3):
    assert S3IO(S3Hook(aws_conn_id="aws_default")).client.meta.config.retries == {"mode": "standard"}
    # The fault proxy's connection chooses its own retries: kept as they are.
    retries = S3IO(S3Hook(aws_conn_id="aws_faulty")).client.meta.config.retries
    assert retries["total_max_attempts"] == 3
