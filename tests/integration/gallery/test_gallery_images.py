"""The gallery's S3 reads against moto, through a proxy that records every request: HEAD first, so an
object over the byte limit is never downloaded; thumbnails by ETag; one client per connection."""

from __future__ import annotations

import pytest
from airflow.providers.amazon.aws.hooks.s3 import S3Hook

from airflow_bettertoken.exceptions import BetterTokenStorageError
from airflow_bettertoken.plugins._images import (
    GalleryImages,
    ImageGone,
    ImageTooLarge,
    NotAnImage,
    S3Objects,
    unavailable,
)
from airflow_bettertoken.protocol.wire import MAX_IMAGE_BYTES
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.s3_io import S3IO, Presence
from airflow_bettertoken.testing.samples import sample_image


def methods(proxy) -> list[str]:
    return [method for method, _ in proxy.requests]


def test_an_object_over_the_byte_limit_is_never_downloaded(faulty_s3, s3, buckets):
    s3.put_object(Bucket=buckets.src, Key="huge.png", Body=b"\x89PNG\r\n\x1a\n" + bytes(MAX_IMAGE_BYTES))
    images, location = GalleryImages(), S3Location(buckets.src, "huge.png")
    faulty_s3.requests.clear()

    head = images.objects.head("aws_faulty", location)
    for read in (images.full, images.thumbnail):
        with pytest.raises(ImageTooLarge, match=f"{MAX_IMAGE_BYTES + 8} bytes"):
            read("aws_faulty", location, head)
    assert methods(faulty_s3) == ["HEAD"]


def test_a_thumbnail_is_made_once_per_version_of_an_object(faulty_s3, s3, buckets):
    images, location = GalleryImages(), S3Location(buckets.src, "a.png")
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=sample_image(300, 200, seed=1))
    faulty_s3.requests.clear()

    first = images.objects.head("aws_faulty", location)
    thumbnail = images.thumbnail("aws_faulty", location, first)
    assert images.thumbnail("aws_faulty", location, images.objects.head("aws_faulty", location)) is thumbnail
    assert methods(faulty_s3) == ["HEAD", "GET", "HEAD"]

    s3.put_object(Bucket=buckets.src, Key="a.png", Body=sample_image(300, 200, seed=2))  # replaced
    second = images.objects.head("aws_faulty", location)
    assert second.etag != first.etag
    assert images.thumbnail("aws_faulty", location, second) != thumbnail
    with pytest.raises(ImageGone):  # the GET asks for the ETag it was keyed by: never the new bytes
        images.full("aws_faulty", location, first)


def test_only_png_jpeg_and_webp_are_served(faulty_s3, s3, buckets):
    images = GalleryImages()
    s3.put_object(Bucket=buckets.src, Key="notes.png", Body=b"<html><script>alert(1)</script></html>")
    location = S3Location(buckets.src, "notes.png")
    head = images.objects.head("aws_faulty", location)
    for read in (images.full, images.thumbnail):
        with pytest.raises(NotAnImage):
            read("aws_faulty", location, head)


def test_one_client_serves_each_connection_until_it_is_old(faulty_s3):
    now = [0.0]
    objects = S3Objects(client_ttl=300, clock=lambda: now[0])
    client = objects.store("aws_faulty").client
    now[0] = 299
    assert objects.store("aws_faulty").client is client
    assert objects.store("aws_default").client is not client
    now[0] = 301  # an admin may have changed the connection: it is read again
    assert objects.store("aws_faulty").client is not client


def test_a_403_is_hidden_and_named_so_never_missing(faulty_s3, s3, buckets):
    faulty_s3.no_list_bucket = True  # AWS's 403 for a missing key, without s3:ListBucket
    head = GalleryImages().objects.head("aws_faulty", S3Location(buckets.src, "gone.png"))
    assert head.presence is Presence.HIDDEN
    assert "S3 answered 403" in unavailable(head.presence)
    assert unavailable(Presence.MISSING) == "the image is no longer in S3"


def test_throttling_is_an_error_never_missing(faulty_s3, s3, buckets):
    images, location = GalleryImages(), S3Location(buckets.src, "a.png")
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=sample_image(300, 200, seed=1))
    faulty_s3.fail_reads = -1
    with pytest.raises(BetterTokenStorageError, match="HeadObject") as info:
        images.objects.head("aws_faulty", location)
    assert (info.value.status, info.value.retryable) == (503, True)
    assert methods(faulty_s3).count("HEAD") == 3  # botocore's attempts, as the connection configures them

    faulty_s3.fail_reads = 0
    head = images.objects.head("aws_faulty", location)
    faulty_s3.fail_reads = -1
    with pytest.raises(BetterTokenStorageError, match="GetObject"):
        images.thumbnail("aws_faulty", location, head)


def test_the_reads_carry_the_read_arguments(faulty_s3, s3, buckets):
    faulty_s3.requester_pays = True
    location = S3Location(buckets.src, "a.png")
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=b"png")
    hook = S3Hook(aws_conn_id="aws_faulty")
    assert S3IO(hook).head(location).presence is Presence.HIDDEN
    store = S3IO(hook, {"RequestPayer": "requester"})
    assert store.get(location).body == b"png"
    assert store.list_keys(S3Location(buckets.src, "")) == ["a.png"]
