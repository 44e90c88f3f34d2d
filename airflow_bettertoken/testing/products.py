"""A sample products table for the table enrichment examples: a row per product, each with its image.

>>> sample_products("s3://bettertoken-in/products/images/")[0]["image_uri"]
's3://bettertoken-in/products/images/p-001.png'

:func:`put_sample_products` puts the images and the table as CSV into S3 (the example DAGs' set-up,
``make demo`` and the tests); :func:`create_products_sql` and :func:`insert_products_sql` make the same
rows a PostgreSQL table, for the SQL example.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "COLUMNS",
    "create_products_sql",
    "insert_products_sql",
    "products_csv",
    "put_sample_images",
    "put_sample_products",
    "sample_image_of",
    "sample_products",
]

#: The table's columns, in order: ``id`` is the key, ``image_uri`` the source image of each row.
COLUMNS = ("id", "name", "category", "colour", "image_uri")

CATEGORIES = ("mug", "lamp", "chair", "backpack", "sneaker")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange")
# Each category's images have their own size and format, so a results table shows real sizes that differ
# from the sources' and the sources come in every format the edit reads.
IMAGE_SHAPES = {
    "mug": (240, 240, "png"),
    "lamp": (180, 270, "jpg"),
    "chair": (256, 192, "webp"),
    "backpack": (200, 260, "png"),
    "sneaker": (300, 180, "jpg"),
}


def sample_products(image_prefix: str, count: int = 20) -> list[dict[str, str]]:
    """``count`` products, ``p-001`` onwards: every category in turn, the colours in another rhythm.

    :param image_prefix: ``s3://bucket/prefix/`` under which each product's image is ``<id>.<format>``.
    :param count: how many rows, from 1 to 999.
    """
    if not image_prefix.startswith("s3://") or not image_prefix.endswith("/"):
        raise ValueError(f"image_prefix={image_prefix!r} must be an S3 prefix such as 's3://bucket/images/'")
    if not 1 <= count <= 999:
        raise ValueError(f"count={count!r} must be from 1 to 999 (the ids have three digits)")
    rows = []
    for n in range(count):
        category, colour = CATEGORIES[n % len(CATEGORIES)], COLOURS[n % len(COLOURS)]
        product_id = f"p-{n + 1:03}"
        fmt = IMAGE_SHAPES[category][2]
        rows.append(
            {
                "id": product_id,
                "name": f"{colour.capitalize()} {category}",
                "category": category,
                "colour": colour,
                "image_uri": f"{image_prefix}{product_id}.{fmt}",
            }
        )
    return rows


def sample_image_of(row: Mapping[str, str]) -> bytes:
    """The product's sample image, in the format its ``image_uri`` names (Pillow draws it)."""
    from airflow_bettertoken.testing.samples import sample_image

    width, height, fmt = IMAGE_SHAPES[row["category"]]
    return sample_image(width, height, fmt, seed=int(row["id"].removeprefix("p-")))


def products_csv(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] = COLUMNS) -> bytes:
    """The rows as CSV with a header line, UTF-8."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: row[column] for column in columns} for row in rows)
    return out.getvalue().encode()


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not uri.startswith("s3://") or not bucket or not key:
        raise ValueError(f"{uri!r} is not an S3 object URI such as 's3://bucket/products.csv'")
    return bucket, key


def put_sample_products(
    s3: Any, table_uri: str, image_prefix: str, count: int = 20, *, replace: bool = False
) -> list[dict[str, str]]:
    """Put the sample products' images under ``image_prefix`` and their table, as CSV, at ``table_uri``.

    The images go first and the table last, so that no reader sees a row whose image is missing. With
    ``replace`` off, an existing table is left as it is, and nothing is put.

    :param s3: a boto3 S3 client (``S3Hook(...).get_conn()``).
    :param table_uri: ``s3://bucket/key.csv`` for the table.
    :param image_prefix: ``s3://bucket/prefix/`` for the images; any bucket the client may write to.
    :param count: how many products.
    :return: the rows put, as in the table; none when the table was there already.
    """
    bucket, key = _split(table_uri)
    rows = sample_products(image_prefix, count)
    if not replace and _exists(s3, bucket, key):
        return []
    put_sample_images(s3, rows)
    s3.put_object(Bucket=bucket, Key=key, Body=products_csv(rows), ContentType="text/csv")
    return rows


def put_sample_images(s3: Any, rows: Iterable[Mapping[str, str]]) -> None:
    """Put each sample product's image at its ``image_uri``, e.g. for rows that a database holds.

    :param s3: a boto3 S3 client.
    :param rows: rows of :func:`sample_products`.
    """
    for row in rows:
        bucket, key = _split(row["image_uri"])
        s3.put_object(Bucket=bucket, Key=key, Body=sample_image_of(row))


def _exists(s3: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def _identifier(table: str) -> str:
    if not all(part.isidentifier() for part in table.split(".")):
        raise ValueError(f"table={table!r} must be a plain SQL name such as 'products' or 'shop.products'")
    return table


def create_products_sql(table: str = "products") -> str:
    """The products table in PostgreSQL, when it does not exist: the same columns, ``id`` its key.

    :param table: the table's name, optionally schema-qualified; a name written in code, never user input.
    """
    return (
        f"CREATE TABLE IF NOT EXISTS {_identifier(table)} (id text PRIMARY KEY, name text NOT NULL, "
        "category text NOT NULL, colour text NOT NULL, image_uri text NOT NULL)"
    )


def insert_products_sql(table: str = "products") -> str:
    """An INSERT of one row (``%(column)s`` parameters) that leaves a row already there as it is.

    :param table: as for :func:`create_products_sql`.
    """
    names = ", ".join(COLUMNS)
    values = ", ".join(f"%({column})s" for column in COLUMNS)
    return f"INSERT INTO {_identifier(table)} ({names}) VALUES ({values}) ON CONFLICT (id) DO NOTHING"
