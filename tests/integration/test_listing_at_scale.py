"""Planning a catalog-sized backfill on moto: only pending edits, in key order, from LISTs alone."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator

SOURCES = 5000
EXTENSIONS = (".jpg", ".JPG", ".png", ".Jpeg", ".WEBP")


def source_key(n: int) -> str:
    return f"catalog/dept-{n % 4}/aisle-{n % 9}/item-{n:05}{EXTENSIONS[n % len(EXTENSIONS)]}"


def output_key(n: int) -> str:
    return f"edited/dept-{n % 4}/aisle-{n % 9}/item-{n:05}.png"


def is_done(n: int) -> bool:
    return n % 10 < 3  # 1,500 of the 5,000


@pytest.fixture(scope="module")
def catalog(s3):
    """5,000 sources in nested folders (and files that are not images), 1,500 of them edited already.

    Seeded once for the module: the tests below run in order, the last one finishing the catalog.
    """
    suffix = uuid.uuid4().hex[:10]
    buckets = SimpleNamespace(src=f"scale-in-{suffix}", out=f"scale-out-{suffix}")
    for bucket in (buckets.src, buckets.out):
        s3.create_bucket(Bucket=bucket)
    puts = [(buckets.src, source_key(n)) for n in range(SOURCES)]
    puts += [(buckets.src, f"catalog/dept-{n}/README.txt") for n in range(4)]
    puts += [(buckets.out, output_key(n)) for n in range(SOURCES) if is_done(n)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda put: s3.put_object(Bucket=put[0], Key=put[1], Body=b"x"), puts))
    return buckets


def listing(buckets, **kwargs) -> BetterTokenListImagesOperator:
    return BetterTokenListImagesOperator(
        task_id="list",
        source_prefix=f"s3://{buckets.src}/catalog/",
        dest_prefix=f"s3://{buckets.out}/edited/",
        aws_conn_id="aws_faulty",  # through the counting proxy
        **kwargs,
    )


def test_the_listing_plans_the_first_pending_edits_in_key_order_from_lists_alone(
    catalog, emulator, faulty_s3, task_context
):
    edits = listing(catalog, max_edits=1000).execute(task_context)

    pending = sorted((source_key(n), n) for n in range(SOURCES) if not is_done(n))
    assert [e["source"] for e in edits] == [f"s3://{catalog.src}/{key}" for key, _ in pending[:1000]]
    assert [e["dest"] for e in edits] == [f"s3://{catalog.out}/{output_key(n)}" for _, n in pending[:1000]]
    assert task_context["ti"].xcoms["counts"] == {
        "images": 5000,
        "done": 1500,
        "pending": 3500,
        "planned": 1000,
        "remaining": 2500,
        "failed_for_good": 0,
        "format": 1,
    }
    lists = [path for method, path in faulty_s3.requests if method == "GET" and "list-type=2" in path]
    others = [request for request in faulty_s3.requests if request[1] not in lists]
    assert len(lists) == 6 + 2  # 1,000 keys a page: 6 of the 5,004 sources (READMEs too), 2 of outputs
    # The rest is the preflight's, a fixed eight: the bucket, a probe written, read back, written again
    # create-only (which S3 must refuse) and deleted, and one under _bettertoken/ written, read, deleted;
    # then the chain's record read, the connection's recent costs read for the estimate, and the
    # chain's record written (this is the chain's first run).
    assert [method for method, _ in others] == [
        *("HEAD", "PUT", "HEAD", "PUT", "POST", "PUT", "HEAD", "POST"),
        *("GET", "GET", "PUT"),
    ]
    preflight, (chain_read, costs, chain_written) = others[:8], others[8:]
    assert all(".bettertoken-preflight" in path or path.rstrip("/").count("/") == 1 for _, path in preflight)
    assert all("/_bettertoken/chains/" in path for _, path in (chain_read, chain_written))
    assert "/_bettertoken/costs/" in costs[1]
    assert emulator.stats()["posts"] == 0


def test_a_finished_catalog_plans_nothing(catalog, s3, emulator, faulty_s3, task_context):
    with ThreadPoolExecutor(8) as pool:
        missing = [n for n in range(SOURCES) if not is_done(n)]
        list(pool.map(lambda n: s3.put_object(Bucket=catalog.out, Key=output_key(n), Body=b"x"), missing))

    task_context["ti"].run_id = "manual__a_new_chain"  # not the chain of the test before, on this catalog
    assert listing(catalog).execute(task_context) == []
    assert task_context["ti"].xcoms["counts"] == {
        "images": 5000,
        "done": 5000,
        "pending": 0,
        "planned": 0,
        "remaining": 0,
        "failed_for_good": 0,
        "format": 1,
    }


def test_two_sources_for_one_output_are_refused_across_the_whole_listing(s3, buckets, emulator, task_context):
    s3.put_object(Bucket=buckets.src, Key="catalog/a/x.jpg", Body=b"x")
    s3.put_object(Bucket=buckets.src, Key="catalog/a/x.png", Body=b"x")
    s3.put_object(Bucket=buckets.out, Key="edited/a/x.png", Body=b"x")  # done: still a clash
    op = BetterTokenListImagesOperator(
        task_id="list",
        source_prefix=f"s3://{buckets.src}/catalog/",
        dest_prefix=f"s3://{buckets.out}/edited/",
    )
    with pytest.raises(Exception, match=r"a/x\.jpg and .*a/x\.png would both be written"):
        op.execute(task_context)
