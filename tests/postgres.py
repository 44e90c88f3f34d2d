"""A products table in PostgreSQL on 127.0.0.1:5432, in a schema of its own that is dropped afterwards.

The project's machines run PostgreSQL there (trust authentication, user ``postgres``); without it the
tests that need it skip, but fail under ``CI=true``, where it must be there.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from typing import Any

import pytest

from airflow_bettertoken.testing.products import create_products_sql, insert_products_sql
from tests.ports import reachable

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}


def require_postgres() -> None:
    if not reachable(PG["host"], PG["port"]):
        reason = f"the SQL tests need PostgreSQL listening on {PG['host']}:{PG['port']}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI has it, so its absence is a failure here")
        pytest.skip(reason)


@contextmanager
def products_schema(rows: Sequence[Mapping[str, Any]]) -> Iterator[str]:
    """A fresh schema holding a ``products`` table with ``rows``; dropped, with all in it, on the way out."""
    import psycopg2  # the PostgreSQL provider's driver, which the dev extra installs

    schema = f"bettertoken_{secrets.token_hex(4)}"
    table = f"{schema}.products"
    with closing(psycopg2.connect(**PG)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE SCHEMA {schema}")
            try:
                cursor.execute(create_products_sql(table))
                cursor.executemany(insert_products_sql(table), [dict(row) for row in rows])
                yield schema
            finally:
                cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def postgres_connection(schema: str) -> dict[str, Any]:
    """An Airflow connection to the database whose search path starts at ``schema``, so that a query
    names ``products`` as a DAG's would. The PostgreSQL hook passes ``options`` to the driver for its
    own connections, and ``sqlalchemy_query`` to the engine that reads DataFrames (``get_df``)."""
    options = {"options": f"-c search_path={schema}"}
    return {
        "conn_type": "postgres",
        "host": PG["host"],
        "port": PG["port"],
        "login": PG["user"],
        "schema": PG["dbname"],
        "extra": {**options, "sqlalchemy_query": options},
    }
