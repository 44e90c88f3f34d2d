from __future__ import annotations

import json

import pytest

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.storage.findings import ListingFindings, SkippedKey, StoreCheck
from airflow_bettertoken.storage.listing import ListingCounts, plan_edits, plan_pending, usable_sources
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


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("in//x.jpg", "an empty path segment ('//')"),
        ("in/a//x.jpg", "an empty path segment ('//')"),
        ("in/../x.jpg", "a '..' path segment"),
        ("in/a/../x.jpg", "a '..' path segment"),
        ("in/./x.jpg", "a '.' path segment"),
        ("in/a\x07.jpg", "a control character"),
        ("in/a\nb.png", "a control character"),
    ],
    ids=["leading-empty", "inner-empty", "dotdot", "inner-dotdot", "dot", "bell", "newline"],
)
def test_a_key_without_a_safe_output_path_is_skipped_with_its_reason(key, reason):
    usable, skipped = usable_sources([key, "in/good.jpg"], S3Location("src", "in/"))
    assert usable == ["in/good.jpg"]
    assert [(s.key, s.reason) for s in skipped] == [
        (key, f"its path has {reason}, so it has no safe output key")
    ]


def test_the_providers_own_records_and_non_images_are_dropped_without_a_word():
    keys = ["_bettertoken/spill/abc.png", "_bettertoken/ledger/x.png.json", "notes//x.txt", "a.png"]
    assert usable_sources(keys, S3Location("src", "")) == (["a.png"], [])


def test_a_plan_skips_bad_keys_and_counts_only_the_images_it_can_use():
    keys = ["in/a.jpg", "in//b.jpg", "in/../c.jpg", "in/d.png"]
    plan = plan_pending(
        keys,
        ["out/a.png"],
        S3Location("src", "in/"),
        S3Location("dst", "out/"),
        only_pending=True,
        max_edits=10,
    )
    assert [e["source"] for e in plan.edits] == ["s3://src/in/d.png"]
    assert plan.counts == ListingCounts(
        images=2, done=1, pending=1, remaining=0, planned=1, failed_for_good=0
    )
    assert [s.key for s in plan.skipped] == ["in/../c.jpg", "in//b.jpg"]


def test_a_bad_dest_prefix_is_still_an_error_not_a_skip():
    with pytest.raises(BetterTokenInputError, match="empty path segment"):
        plan_pending(
            ["in/a.jpg"],
            [],
            S3Location("src", "in/"),
            S3Location("dst", "out//"),
            only_pending=True,
            max_edits=1,
        )


def test_findings_survive_xcom_and_name_at_most_a_hundred_keys():
    skipped = [SkippedKey(f"in//{n}.jpg", "why") for n in range(150)]
    store = StoreCheck("s3://dst/out/", conditional_writes=False, can_list=True)
    findings = ListingFindings.of(skipped, store)
    copy = ListingFindings.load(json.loads(json.dumps(findings.dump())), "findings")
    assert copy == findings
    assert (len(copy.skipped_keys), copy.skipped_total) == (100, 150)
    [warning] = findings.dump()["store"]["warnings"]
    assert "ignores conditional writes" in warning and "duplicates and overwrites are possible" in warning
