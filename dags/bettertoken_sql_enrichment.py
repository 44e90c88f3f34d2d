"""Product photos from a SQL query: the rows of a PostgreSQL query, one edit each, each with its own prompt.

    PostgreSQL: SELECT id, name, category, colour, image_uri FROM products
        --> export_products (the Amazon provider's SqlToS3Operator)
              s3://<in_bucket>/products-sql/products.csv    a CSV with a header line
        --> the table's enrichment                          "... this ${colour} ${category} ..."
              s3://<out_bucket>/products-sql-edited/<id>.png
              s3://bettertoken-out/products-sql-results/latest.jsonl   (the results table: an asset)

The query runs on the connection ``postgres_conn_id``; the first task creates the sample ``products``
table there (kept as it is when it exists) and puts its images in the input bucket, unless
``put_samples`` is off. Any database with an Airflow SQL hook works the same way: the planner reads the
file SqlToS3Operator writes, not the database.

SqlToS3Operator needs pandas (``pip install "apache-airflow-providers-common-sql[pandas]"``) and the
database's provider (here ``apache-airflow-providers-postgres``). It writes the query's result whole, from
one DataFrame in the worker's memory: for a query of millions of rows, export with the database's own
tools (``COPY`` to a file, or an unload to S3) and point ``table_enrichment`` at that file.
"""

from __future__ import annotations

import inspect
from contextlib import closing

import pendulum
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.transfers.sql_to_s3 import SqlToS3Operator
from airflow.sdk import DAG, Param, task

from airflow_bettertoken import SIZES, table_enrichment

QUERY = "SELECT id, name, category, colour, image_uri FROM products ORDER BY id"
EXPORT_KEY = "products-sql/products.csv"
RESULTS_PREFIX = "s3://bettertoken-out/products-sql-results/"
PROMPT = "Photograph this ${colour} ${category} as a studio product shot on a plain white background"
# The CSV without pandas' index column. The DataFrame writer's arguments are `df_kwargs` in the Amazon
# provider's newer releases, `pd_kwargs` (deprecated since) in 9.12.0, the oldest this project supports.
WRITER = "df_kwargs" if "df_kwargs" in inspect.signature(SqlToS3Operator).parameters else "pd_kwargs"

with DAG(
    dag_id="bettertoken_sql_enrichment",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["bettertoken", "example"],
    params={
        "in_bucket": Param("bettertoken-in", type="string"),
        "out_bucket": Param("bettertoken-out", type="string"),
        "postgres_conn_id": Param("postgres_default", type="string", minLength=1),
        "put_samples": Param(
            True, type="boolean", description="Create the sample products table if it does not exist"
        ),
        "prompt_template": Param(PROMPT, type="string", minLength=1),
        "size": Param("1024x1024", enum=list(SIZES)),
        "max_edits_per_run": Param(100, type="integer", minimum=1, maximum=1024),
        "until_done": Param(
            False, type="boolean", description="Trigger the next run until every row is done"
        ),
    },
) as dag:

    @task
    def create_sample_products(params=None) -> int:
        """The sample ``products`` table, unless off; its rows' images in S3. How many rows it offered."""
        if not params["put_samples"]:
            return 0
        # Loaded only here, when the task runs: parsing the DAG needs neither.
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        from airflow_bettertoken.testing.products import (
            create_products_sql,
            insert_products_sql,
            put_sample_images,
            sample_products,
        )

        rows = sample_products(f"s3://{params['in_bucket']}/products-sql/images/")
        put_sample_images(S3Hook().get_conn(), rows)
        hook = PostgresHook(postgres_conn_id=params["postgres_conn_id"])
        with closing(hook.get_conn()) as conn:
            with closing(conn.cursor()) as cursor:
                cursor.execute(create_products_sql())
                cursor.executemany(insert_products_sql(), rows)  # a row already there is kept
            conn.commit()
        return len(rows)

    export = SqlToS3Operator(
        task_id="export_products",
        query=QUERY,
        sql_conn_id="{{ params.postgres_conn_id }}",
        s3_bucket="{{ params.in_bucket }}",
        s3_key=EXPORT_KEY,
        file_format="csv",
        replace=True,  # each run exports the rows as they are now; rows already edited are not paid again
        **{WRITER: {"index": False}},
    )

    enrichment = table_enrichment(
        table_uri="s3://{{ params.in_bucket }}/" + EXPORT_KEY,
        dest_prefix="s3://{{ params.out_bucket }}/products-sql-edited/",
        key_column="id",
        source_columns=["image_uri"],
        prompt_template="{{ params.prompt_template }}",
        default_size="{{ params.size }}",
        max_edits_per_run="{{ params.max_edits_per_run }}",
        until_done="{{ params.until_done }}",
        results_prefix=RESULTS_PREFIX,
    )
    create_sample_products() >> export >> enrichment
