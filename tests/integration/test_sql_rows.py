"""The inputs of the table examples: the sample products table in S3, and rows from a PostgreSQL query
written to S3 by the Amazon provider's ``SqlToS3Operator``, in the formats the table planner reads."""

from __future__ import annotations

import csv
import inspect
import io
import json
from contextlib import closing

import pytest
from airflow.providers.amazon.aws.transfers.sql_to_s3 import SqlToS3Operator

from airflow_bettertoken.testing.products import (
    COLUMNS,
    products_csv,
    put_sample_products,
    sample_image_of,
    sample_products,
)

QUERY = "SELECT id, name, category, colour, image_uri FROM products ORDER BY id"


def body(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_the_sample_products_put_their_images_then_their_table_and_leave_a_table_there(s3, buckets):
    table_uri, images = f"s3://{buckets.src}/products/products.csv", f"s3://{buckets.src}/products/images/"

    put = put_sample_products(s3, table_uri, images)

    assert [row["id"] for row in put] == [f"p-{n:03}" for n in range(1, 21)]
    assert csv_rows(body(s3, buckets.src, "products/products.csv")) == put
    assert {row["category"] for row in put} == {"mug", "lamp", "chair", "backpack", "sneaker"}
    for row in put:
        key = row["image_uri"].removeprefix(f"s3://{buckets.src}/")
        assert body(s3, buckets.src, key) == sample_image_of(row), row["id"]
    # Put again with fewer rows: the table is kept as it is, unless replaced.
    assert put_sample_products(s3, table_uri, images, count=3) == []
    assert len(csv_rows(body(s3, buckets.src, "products/products.csv"))) == 20
    assert len(put_sample_products(s3, table_uri, images, count=3, replace=True)) == 3
    assert len(csv_rows(body(s3, buckets.src, "products/products.csv"))) == 3


@pytest.mark.parametrize(
    ("prefix", "count", "error"),
    [
        ("bettertoken-in/images/", 20, "must be an S3 prefix"),
        ("s3://bettertoken-in/images", 20, "must be an S3 prefix"),
        ("s3://bettertoken-in/images/", 0, "from 1 to 999"),
        ("s3://bettertoken-in/images/", 1000, "from 1 to 999"),
    ],
    ids=["not-s3", "no-trailing-slash", "none", "too-many"],
)
def test_the_sample_products_name_what_is_wrong(prefix, count, error):
    with pytest.raises(ValueError, match=error):
        sample_products(prefix, count)


def test_a_csv_header_names_every_column_once_in_order():
    data = products_csv(sample_products("s3://b/i/", 2)).decode()
    assert data.splitlines()[0] == ",".join(COLUMNS)
    assert data.count("\n") == 3


def writer_arguments(arguments: dict) -> dict:
    """SqlToS3Operator's DataFrame writer arguments: ``df_kwargs`` in the Amazon provider's newer releases,
    ``pd_kwargs`` (deprecated since) in 9.12.0, the oldest this project supports; as in
    dags/bettertoken_sql_enrichment.py."""
    name = "df_kwargs" if "df_kwargs" in inspect.signature(SqlToS3Operator).parameters else "pd_kwargs"
    return {name: arguments}


@pytest.mark.parametrize(
    ("file_format", "arguments", "key"),
    [
        # A header line, and no index column: the planner reads CSV by the key's suffix.
        ("csv", {"index": False}, "exports/products.csv"),
        # One JSON object a line; pandas names the key .json, so the planner is told the format.
        ("json", {"orient": "records", "lines": True}, "exports/products.json"),
    ],
    ids=["csv", "json-lines"],
)
def test_sql_to_s3_writes_the_query_rows_as_the_planner_reads_them(
    postgres_products, s3, buckets, file_format, arguments, key
):
    table = postgres_products(f"s3://{buckets.src}/products/images/")
    export = SqlToS3Operator(
        task_id="export_products",
        query=QUERY,
        sql_conn_id=table.conn_id,
        s3_bucket=buckets.src,
        s3_key=key,
        file_format=file_format,
        replace=True,
        aws_conn_id="aws_default",
        **writer_arguments(arguments),
    )

    export.execute({})

    data = body(s3, buckets.src, key)
    if file_format == "csv":
        assert data.decode().splitlines()[0] == ",".join(COLUMNS)
        rows = csv_rows(data)
    else:
        rows = [json.loads(line) for line in data.decode().splitlines()]
    assert rows == table.rows
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=buckets.src, Prefix="exports/")["Contents"]]
    assert keys == [key]


def test_the_products_schema_holds_the_rows_and_is_dropped_after():
    import psycopg2

    from tests.postgres import PG, products_schema, require_postgres

    require_postgres()
    rows = sample_products("s3://b/i/", 3)
    with closing(psycopg2.connect(**PG)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            with products_schema(rows) as schema:
                cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM {schema}.products ORDER BY id")
                assert [dict(zip(COLUMNS, row, strict=True)) for row in cursor.fetchall()] == rows
            cursor.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,))
            assert cursor.fetchone() == (0,)
