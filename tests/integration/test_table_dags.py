"""The table example DAGs end to end with dag.test(): a products table in S3, the downstream join on its
results table's asset, and the same rows from a PostgreSQL query through SqlToS3Operator."""

from __future__ import annotations

import json

import pytest

from airflow_bettertoken.testing.sandbox import return_values
from tests.airflow_versions import load_dag

pytestmark = pytest.mark.usefixtures("airflow_db")

# The results tables go to a fixed place, so that a downstream DAG can be scheduled on their asset.
RESULTS_BUCKET = "bettertoken-out"


@pytest.fixture
def results_bucket(s3):
    """The results tables' bucket, without the tables of an earlier test: a run merges the last one."""
    if RESULTS_BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=RESULTS_BUCKET)
    for prefix in ("products-results/", "products-sql-results/"):
        for item in s3.list_objects_v2(Bucket=RESULTS_BUCKET, Prefix=prefix).get("Contents", []):
            s3.delete_object(Bucket=RESULTS_BUCKET, Key=item["Key"])
    return RESULTS_BUCKET


def latest_results(s3, prefix: str) -> list[dict]:
    body = s3.get_object(Bucket=RESULTS_BUCKET, Key=f"{prefix}latest.jsonl")["Body"].read()
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def test_the_products_table_is_edited_row_by_row_and_joined_downstream(s3, buckets, emulator, results_bucket):
    products = load_dag("bettertoken_products_enrichment")
    conf = {"in_bucket": buckets.src, "out_bucket": buckets.out, "size": "1024x1024"}

    run = products.test(run_conf=conf)

    assert run.state == "success"
    assert return_values(products.dag_id, run.run_id, "put_sample_products") == [20]
    assert emulator.stats()["paid"] == 20
    results = {row["key"]: row for row in latest_results(s3, "products-results/")}
    assert sorted(results) == [f"p-{n:03}" for n in range(1, 21)]
    assert {(r["state"], r["width"], r["height"]) for r in results.values()} == {("done", 1024, 1024)}
    assert results["p-002"]["output_uri"] == f"s3://{buckets.out}/products-edited/p-002.png"
    assert results["p-002"]["prompt"] == (
        "Photograph this blue lamp as a studio product shot on a plain white background"
    )

    # The downstream DAG is scheduled on the very asset the results table is emitted as.
    joined_dag = load_dag("bettertoken_products_joined")
    outlets = products.get_task("write_results_table").outlets
    assert joined_dag.schedule == list(outlets)
    joined_run = joined_dag.test(run_conf={"products": f"s3://{buckets.src}/products/products.csv"})

    assert joined_run.state == "success"
    (joined,) = return_values(joined_dag.dag_id, joined_run.run_id, "join_products_with_results")
    assert len(joined) == 20
    assert joined[0] == {
        "id": "p-001",
        "name": "Red mug",
        "category": "mug",
        "colour": "red",
        "image_uri": f"s3://{buckets.src}/products/images/p-001.png",
        "state": "done",
        "output_uri": f"s3://{buckets.out}/products-edited/p-001.png",
        "width": 1024,
        "height": 1024,
    }

    # A second run finds every output and pays for nothing.
    again = products.test(run_conf=conf)
    assert again.state == "success"
    assert emulator.stats()["paid"] == 20


def test_the_rows_of_a_postgresql_query_are_edited(s3, buckets, emulator, results_bucket, postgres_products):
    table = postgres_products(f"s3://{buckets.src}/products-sql/images/", count=6)
    dag = load_dag("bettertoken_sql_enrichment")

    run = dag.test(
        run_conf={
            "in_bucket": buckets.src,
            "out_bucket": buckets.out,
            "postgres_conn_id": table.conn_id,
            "size": "1024x1024",
        }
    )

    assert run.state == "success"
    # The set-up kept the fixture's 6 rows, added the other 14 samples and put the 20 images.
    exported = s3.get_object(Bucket=buckets.src, Key="products-sql/products.csv")["Body"].read().decode()
    assert exported.splitlines()[0] == "id,name,category,colour,image_uri"
    assert len(exported.splitlines()) == 21
    assert emulator.stats()["paid"] == 20
    results = latest_results(s3, "products-sql-results/")
    assert {(r["state"], r["width"]) for r in results} == {("done", 1024)}
