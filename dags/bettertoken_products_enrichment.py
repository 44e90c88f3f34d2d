"""Product photos from a table: one edit per row of a products table, each row with its own prompt.

    s3://<in_bucket>/products/products.csv      id, name, category, colour, image_uri
        --> bettertoken_products_enrichment     "... this ${colour} ${category} ..." for each row
              s3://<out_bucket>/products-edited/<id>.png
              s3://bettertoken-out/products-results/latest.jsonl   (the results table: an asset)
        --> bettertoken_products_joined         scheduled on that asset

The first task puts the sample products (20 rows and their images) in the input bucket when no table is
there yet; turn ``put_samples`` off, and point ``table`` at your own table (CSV with a header, JSON Lines
or Parquet) instead. Each run edits only the rows whose output does not exist yet, at most
``max_edits_per_run`` of them; ``until_done`` triggers the next run until every row is done. Rows
that cannot be planned (no id, no image, a placeholder with no value) are ``bad`` in the results
table and never paid for.

The results table goes to a fixed place, ``RESULTS_PREFIX``, so that a downstream DAG can be scheduled
on its asset; change it here and in ``bettertoken_products_joined.py`` together.
"""

from __future__ import annotations

import pendulum
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.sdk import DAG, Param, task

from airflow_bettertoken import SIZES, table_enrichment

RESULTS_PREFIX = "s3://bettertoken-out/products-results/"
# ${field} is a column of the row (string.Template syntax, which Jinja leaves alone).
# max_spend: an amount in the connection's price table's currency, with or without it; empty for none.
MONEY = "^(([A-Z]{3} )?[0-9]+(\\.[0-9]+)?)?$"
PROMPT = "Photograph this ${colour} ${category} as a studio product shot on a plain white background"

with DAG(
    dag_id="bettertoken_products_enrichment",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["bettertoken", "example"],
    params={
        "in_bucket": Param("bettertoken-in", type="string"),
        "out_bucket": Param("bettertoken-out", type="string"),
        "table": Param("products/products.csv", type="string", pattern="^[^/].*[^/]$"),
        "put_samples": Param(
            True, type="boolean", description="Put the sample products at `table` first if no table is there"
        ),
        "prompt_template": Param(PROMPT, type="string", minLength=1),
        "size": Param("1024x1024", enum=list(SIZES)),
        "max_edits_per_run": Param(100, type="integer", minimum=1, maximum=1024),
        "until_done": Param(
            False, type="boolean", description="Trigger the next run until every row is done"
        ),
        "max_spend": Param(
            "",
            type="string",
            pattern=MONEY,
            description="The chain's cap on cost, in the price table's currency (e.g. 25.00); empty: none",
        ),
    },
) as dag:

    @task
    def put_sample_products(params=None) -> int:
        """The sample products table and its images, unless off or a table is there; how many rows it put."""
        if not params["put_samples"]:
            return 0
        # The testing tools load only here, when the task runs: parsing the DAG loads none of them.
        from airflow_bettertoken.testing.products import put_sample_products as put

        bucket = params["in_bucket"]
        rows = put(S3Hook().get_conn(), f"s3://{bucket}/{params['table']}", f"s3://{bucket}/products/images/")
        return len(rows)

    put_sample_products() >> table_enrichment(
        table_uri="s3://{{ params.in_bucket }}/{{ params.table }}",
        dest_prefix="s3://{{ params.out_bucket }}/products-edited/",
        key_column="id",
        source_columns=["image_uri"],
        prompt_template="{{ params.prompt_template }}",
        default_size="{{ params.size }}",
        max_edits_per_run="{{ params.max_edits_per_run }}",
        until_done="{{ params.until_done }}",
        max_spend="{{ params.max_spend }}",
        results_prefix=RESULTS_PREFIX,
    )
