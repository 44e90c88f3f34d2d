"""Downstream of a table's enrichment: the products joined with their edited images' real sizes.

Scheduled on the results table that ``bettertoken_products_enrichment`` writes after each run (its
``latest.jsonl`` is an asset), it reads that table and the products table, joins them by the product's
id (the results table's ``key``) and returns one row per product: its columns, the edit's ``state``,
``output_uri`` and the PNG's real ``width`` and ``height`` as stored.

It keeps the products in memory and streams the results: for a table of millions of rows, join in your
warehouse instead (the results table is there as JSON Lines, and as Parquet with pyarrow installed).
"""

from __future__ import annotations

import csv
import io
import json
import logging

import pendulum
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.sdk import DAG, Asset, Param, task

# The results table of bettertoken_products_enrichment: its RESULTS_PREFIX + "latest.jsonl".
RESULTS = Asset(uri="s3://bettertoken-out/products-results/latest.jsonl")
# What the joined rows show: the product's columns, then the result's.
PRODUCT_COLUMNS = ("id", "name", "category", "colour")
RESULT_COLUMNS = ("state", "output_uri", "width", "height")
log = logging.getLogger(__name__)


def lines_of(hook: S3Hook, uri: str):
    """The object's lines as text, streamed."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body = hook.get_key(key, bucket_name=bucket).get()["Body"]
    return (line.decode() for line in body.iter_lines())


with DAG(
    dag_id="bettertoken_products_joined",
    schedule=[RESULTS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["bettertoken", "example"],
    params={
        "products": Param("s3://bettertoken-in/products/products.csv", type="string", pattern="^s3://"),
        "results": Param(RESULTS.uri, type="string", pattern="^s3://"),
    },
) as dag:

    @task
    def join_products_with_results(params=None, triggering_asset_events=None) -> list[dict]:
        """One row per product in the results table: the product's columns beside its edit's real size."""
        for events in (triggering_asset_events or {}).values():
            for event in events:
                log.info("Results table %s: rows by state %s", event.asset.uri, event.extra.get("counts"))
        hook = S3Hook()
        products = {row["id"]: row for row in csv.DictReader(lines_of(hook, params["products"]))}
        joined = []
        for line in lines_of(hook, params["results"]):
            if not line.strip():
                continue
            result = json.loads(line)
            product = products.get(result["key"])
            if product is None:  # a row of another table, or one taken out of the products since
                continue
            joined.append({**product, **{column: result.get(column) for column in RESULT_COLUMNS}})
        table = io.StringIO()
        writer = csv.DictWriter(
            table, fieldnames=PRODUCT_COLUMNS + RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(joined)
        log.info("%d products joined with their results:\n%s", len(joined), table.getvalue())
        return joined

    join_products_with_results()
