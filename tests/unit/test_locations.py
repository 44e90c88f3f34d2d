from __future__ import annotations

import pytest

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.storage.listing import plan_edits
from airflow_bettertoken.storage.locations import S3Location, output_location, parse_dest, parse_s3_uri


@pytest.mark.parametrize(
    ("dest", "message"),
    [
        ("s3://out/", "names no key"),
        ("s3://out", "names no key"),
        ("s3:///x.png", "names no bucket"),
        ("s3://out//abs.png", "must not start with '/'"),
        ("s3://out/a/../b.png", "'..' path segments"),
        ("s3://out/a/./b.png", "'..' path segments"),
        ("s3://out/a//b.png", "empty, '.' or '..'"),
        ("s3://out/a\nb.png", "control characters"),
        ("s3://out/a/b.jpg", "must end in .png"),
        ("https://out/a.png", "must be s3://bucket/key.png"),
    ],
    ids=[
        "empty",
        "bucket-only",
        "no-bucket",
        "absolute",
        "dotdot",
        "dot",
        "empty-segment",
        "control",
        "jpg",
        "https",
    ],
)
def test_bad_dest_is_refused(dest, message):
    with pytest.raises(BetterTokenInputError) as info:
        parse_dest(dest)
    assert message in str(info.value)


def test_prefix_dest_takes_the_first_sources_stem():
    source = parse_s3_uri("s3://in/set/a.jpg", "source")
    assert output_location(parse_dest("s3://out/x/"), source).uri == "s3://out/x/a.png"
    assert output_location(parse_dest("s3://out/x/final.png"), source).uri == "s3://out/x/final.png"


@pytest.mark.parametrize("uri", ["s3://bucket", "s3://bucket/", "bucket/key", "s3:///key"])
def test_bad_source_is_refused(uri):
    with pytest.raises(BetterTokenInputError, match="source"):
        parse_s3_uri(uri, "source")


def test_plan_keeps_relative_paths_and_filters_images():
    keys = ["in/a/x.jpg", "in/a/b/x.webp", "in/notes.txt", "in/y.PNG", "in/z.jpeg"]
    edits = plan_edits(keys, S3Location("src", "in/"), S3Location("dst", "out/"))
    assert edits == [
        {"source": "s3://src/in/a/b/x.webp", "dest": "s3://dst/out/a/b/x.png", "image_label": "a/b/x.webp"},
        {"source": "s3://src/in/a/x.jpg", "dest": "s3://dst/out/a/x.png", "image_label": "a/x.jpg"},
        {"source": "s3://src/in/y.PNG", "dest": "s3://dst/out/y.png", "image_label": "y.PNG"},
        {"source": "s3://src/in/z.jpeg", "dest": "s3://dst/out/z.png", "image_label": "z.jpeg"},
    ]


def test_plan_refuses_two_sources_for_one_output():
    with pytest.raises(BetterTokenInputError, match=r"would both be written to s3://dst/out/a/x\.png"):
        plan_edits(["in/a/x.jpg", "in/a/x.png"], S3Location("src", "in/"), S3Location("dst", "out/"))
