"""S3IO, the provider's one S3 write primitive and its reads, against moto and the AWS-like proxy.

The spend ledger keeps its records with these calls; each behaviour it relies on is here.
"""

from __future__ import annotations

import pytest
from airflow.providers.amazon.aws.hooks.s3 import S3Hook

from airflow_bettertoken.exceptions import BetterTokenRecordConflictError, BetterTokenStorageError
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.records import ConditionalRecord
from airflow_bettertoken.storage.s3_io import S3IO, BucketAccess, Presence
from tests.virtual_time import VirtualTime

KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def io(conn_id: str = "aws_default", **extra) -> S3IO:
    return S3IO(S3Hook(aws_conn_id=conn_id), extra or None)


def test_conditional_writes_one_writer_wins_and_the_loser_learns_it(s3, buckets):
    record = S3Location(buckets.out, "_bettertoken/ledger/a.png.json")
    store = io()

    created = store.put(record, b"{}", content_type="application/json", if_none_match=True)
    again = store.put(record, b'{"x": 1}', if_none_match=True)
    updated = store.put(record, b'{"x": 2}', content_type="application/json", if_match=created.etag)
    stale = store.put(record, b'{"x": 3}', if_match=created.etag)

    assert (created.written, again.written, updated.written, stale.written) == (True, False, True, False)
    assert created.etag and updated.etag and updated.etag != created.etag
    read = store.get(record)
    assert (read.presence, read.body, read.etag) == (Presence.FOUND, b'{"x": 2}', updated.etag)
    assert read.content_type == "application/json"
    store.delete(record)
    assert store.put(record, b"{}", if_match=updated.etag).written is False  # deleted meanwhile
    assert store.head(record).presence is Presence.MISSING


def test_every_write_carries_the_extra_arguments(s3, buckets):
    location = S3Location(buckets.out, "edited/a.png")
    io(ServerSideEncryption="aws:kms", SSEKMSKeyId=KMS_KEY).put(location, b"png", metadata={"width": "1"})
    head = s3.head_object(Bucket=buckets.out, Key=location.key)
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"], head["Metadata"]) == (
        "aws:kms",
        KMS_KEY,
        {"width": "1"},
    )


def test_without_list_bucket_a_missing_key_is_hidden_not_missing(s3, buckets, faulty_s3):
    faulty_s3.no_list_bucket = True
    store = io("aws_faulty")
    s3.put_object(Bucket=buckets.out, Key="there.json", Body=b"{}")

    assert store.head(S3Location(buckets.out, "missing.json")).presence is Presence.HIDDEN
    assert store.get(S3Location(buckets.out, "missing.json")).presence is Presence.HIDDEN
    assert store.get(S3Location(buckets.out, "there.json")).body == b"{}"  # reading needs s3:GetObject only
    assert store.bucket(buckets.out) is BucketAccess.FORBIDDEN
    # A create-only write is still safe: it creates what was missing and refuses what was there.
    assert store.put(S3Location(buckets.out, "missing.json"), b"{}", if_none_match=True).written
    assert not store.put(S3Location(buckets.out, "there.json"), b"{}", if_none_match=True).written


def test_with_list_bucket_missing_is_missing(buckets):
    store = io()
    assert store.get(S3Location(buckets.out, "missing.json")).presence is Presence.MISSING
    assert store.bucket(buckets.out) is BucketAccess.FOUND
    assert store.bucket("no-such-bucket-s3io") is BucketAccess.MISSING


def test_a_write_the_store_refuses_is_explained(buckets, faulty_s3):
    faulty_s3.require_kms = True
    with pytest.raises(BetterTokenStorageError, match="may require server-side encryption") as info:
        io("aws_faulty").put(S3Location(buckets.out, "_bettertoken/runs/r.json"), b"{}")
    assert (info.value.status, info.value.code, info.value.retryable) == (403, "AccessDenied", False)


def test_a_copy_is_create_only_keeps_the_metadata_and_carries_the_extra_args(s3, buckets):
    """How the review gate publishes: server-side, never over an existing object, metadata kept."""
    staged, published = (
        S3Location(buckets.out, "_bettertoken/staging/x.png"),
        S3Location(buckets.out, "p/x.png"),
    )
    s3.put_object(
        Bucket=staged.bucket, Key=staged.key, Body=b"png", ContentType="image/png", Metadata={"run-id": "r"}
    )
    store = io(ServerSideEncryption="AES256", Tagging="review=approved")

    first = store.copy(staged, published)
    s3.put_object(Bucket=staged.bucket, Key=staged.key, Body=b"another", Metadata={"run-id": "s"})
    second = store.copy(staged, published)

    assert (first.written, second.written) == (True, False)
    head = s3.head_object(Bucket=published.bucket, Key=published.key)
    assert (head["Metadata"], head["ContentType"], head["ServerSideEncryption"]) == (
        {"run-id": "r"},
        "image/png",
        "AES256",
    )
    assert s3.get_object(Bucket=published.bucket, Key=published.key)["Body"].read() == b"png"
    tags = s3.get_object_tagging(Bucket=published.bucket, Key=published.key)["TagSet"]
    assert tags == [{"Key": "review", "Value": "approved"}]


def test_the_rounds_of_a_conditional_record_wait_in_the_stores_time(buckets):
    """A lost round (another writer came first) waits through the injected Timing: no real sleep."""
    clock = VirtualTime()
    location = S3Location(buckets.out, "_bettertoken/runs/r.json")
    record = ConditionalRecord(S3Hook(aws_conn_id="aws_default"), location, timing=clock.timing())
    other = ConditionalRecord(S3Hook(aws_conn_id="aws_default"), location)
    seen: list[dict | None] = []

    def add_one(current: dict | None) -> dict:
        seen.append(current)
        if len(seen) == 1:
            other.update(lambda _: {"n": 10})  # another writer, between this round's read and write
        return {"n": (current or {"n": 0})["n"] + 1}

    assert record.update(add_one) == {"n": 11}
    assert seen == [None, {"n": 10}]
    [wait] = clock.waits
    assert 0.02 <= wait < 0.1


def test_a_record_that_keeps_changing_gives_up_after_its_rounds_in_virtual_time(buckets):
    clock = VirtualTime()
    location = S3Location(buckets.out, "_bettertoken/runs/busy.json")
    record = ConditionalRecord(S3Hook(aws_conn_id="aws_default"), location, timing=clock.timing())
    other = ConditionalRecord(S3Hook(aws_conn_id="aws_default"), location)

    def always_beaten(current: dict | None) -> dict:
        other.update(lambda found: {"n": (found or {"n": 0})["n"] + 1})
        return {"mine": True}

    with pytest.raises(BetterTokenRecordConflictError, match="kept changing under 50 attempts"):
        record.update(always_beaten)
    # Each wait is 0.02 s to 0.1 s times its round number, at most 10: 50 rounds wait 9.1 s to 45.5 s.
    assert len(clock.waits) == 50 and 9.1 <= sum(clock.waits) < 45.5
    assert all(wait < 1.0 for wait in clock.waits)


def test_a_get_of_one_version_reads_changed_when_the_object_was_replaced(s3, buckets):
    """The gallery's GET asks for the ETag its HEAD saw: never the bytes of a newer version."""
    location = S3Location(buckets.out, "edited/a.png")
    store = io()
    first = store.put(location, b"first")
    assert store.get(location, if_match=first.etag).body == b"first"
    store.put(location, b"second, longer")

    assert store.get(location, if_match=first.etag).presence is Presence.CHANGED
    assert store.get(location, max_bytes=6).body == b"second,"  # at most one byte past the bound
