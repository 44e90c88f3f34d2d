"""Which tasks the gallery lists, read from a real serialization of a DAG: subclasses of the edit
operator included, other operators not, each with the AWS connection its DAG gives it."""

from __future__ import annotations

import pendulum
import pytest

from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator
from airflow_bettertoken.plugins._edit_tasks import edit_tasks_of
from tests.airflow_versions import serialize_dag

EDIT = {"prompt": "p", "source": "s3://in/a.png", "dest": "s3://out/edited/"}


class CatalogEdit(BetterTokenImageEditOperator):
    """A user's subclass, named otherwise: ``TaskInstance.operator`` would say "CatalogEdit"."""


class FixedFieldsEdit(BetterTokenImageEditOperator):
    """A subclass that sets its own template fields, without aws_conn_id."""

    template_fields = ("prompt", "source", "dest")


@pytest.fixture(scope="module")
def edit_tasks():
    from airflow.sdk import DAG

    with DAG(dag_id="catalog", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        BetterTokenListImagesOperator(task_id="list", source_prefix="s3://in/", dest_prefix="s3://out/e/")
        BetterTokenImageEditOperator(task_id="plain", aws_conn_id="aws_catalog", **EDIT)
        CatalogEdit(task_id="subclass", **EDIT)
        CatalogEdit(task_id="subclass_default_chain", aws_conn_id=None, **EDIT)
        CatalogEdit(task_id="templated", aws_conn_id="{{ var.value.catalog_conn }}", **EDIT)
        FixedFieldsEdit(task_id="fixed_fields", aws_conn_id="aws_catalog", **EDIT)
        CatalogEdit.partial(task_id="mapped", prompt="p", aws_conn_id="aws_mapped").expand(
            source=["s3://in/a.png", "s3://in/b.png"], dest=["s3://out/e/", "s3://out/e/"]
        )
        CatalogEdit.partial(task_id="mapped_default", prompt="p").expand_kwargs(
            [{"source": "s3://in/a.png", "dest": "s3://out/e/"}]
        )
        BetterTokenImageEditOperator.partial(
            task_id="mapped_connection", prompt="p", dest="s3://out/"
        ).expand(source=["s3://in/a.png"], aws_conn_id=["aws_a"])
    return edit_tasks_of(serialize_dag(dag))


def test_subclasses_are_edit_tasks_and_other_operators_are_not(edit_tasks):
    assert sorted(edit_tasks) == [
        "fixed_fields",
        "mapped",
        "mapped_connection",
        "mapped_default",
        "plain",
        "subclass",
        "subclass_default_chain",
        "templated",
    ]


@pytest.mark.parametrize(
    ("task_id", "expected"),
    [
        ("plain", "aws_catalog"),
        ("subclass", "aws_default"),
        ("subclass_default_chain", None),  # boto3's default credentials, as S3Hook(aws_conn_id=None)
        ("templated", "not fixed by the DAG"),
        ("fixed_fields", "not fixed by the DAG"),  # its aws_conn_id is not serialized
        ("mapped", "aws_mapped"),
        ("mapped_default", "aws_default"),
        ("mapped_connection", "not fixed by the DAG"),
    ],
)
def test_each_edit_task_has_the_connection_its_dag_fixes(edit_tasks, task_id, expected):
    connection = edit_tasks[task_id].aws_conn
    assert (connection.conn_id if connection else "not fixed by the DAG") == expected


def test_an_edit_knows_whether_it_is_mapped_and_the_tasks_it_waits_on_nearest_first():
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    from airflow_bettertoken.plugins._edit_tasks import dag_tasks_of

    with DAG(dag_id="waits", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        start = EmptyOperator(task_id="start")
        listing = BetterTokenListImagesOperator(
            task_id="list", source_prefix="s3://in/", dest_prefix="s3://o/e/"
        )
        start >> listing
        BetterTokenImageEditOperator.partial(task_id="edit", prompt="p").expand_kwargs(listing.output)
        cover = BetterTokenImageEditOperator(task_id="cover", **EDIT)
    found = dag_tasks_of(serialize_dag(dag))

    assert found.has_listing
    assert (found.edits["edit"].mapped, found.edits["edit"].upstream) == (True, ("list", "start"))
    assert (found.edits[cover.task_id].mapped, found.edits[cover.task_id].upstream) == (False, ())


def test_a_table_row_planner_has_a_catalog_too():
    from airflow.sdk import DAG

    from airflow_bettertoken.operators.list_rows import BetterTokenListRowsOperator
    from airflow_bettertoken.plugins._edit_tasks import dag_tasks_of

    with DAG(dag_id="table", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        rows = BetterTokenListRowsOperator(
            task_id="list_rows", table_uri="s3://in/t.csv", dest_prefix="s3://o/e/", prompt_template="p"
        )
        BetterTokenImageEditOperator.partial(task_id="edit_row").expand_kwargs(rows.output)

    assert dag_tasks_of(serialize_dag(dag)).has_listing


def test_a_dag_without_a_listing_has_no_catalog():
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    from airflow_bettertoken.plugins._edit_tasks import dag_tasks_of

    with DAG(dag_id="empty", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        EmptyOperator(task_id="nothing")

    found = dag_tasks_of(serialize_dag(dag))
    assert (found.edits, found.has_listing) == ({}, False)
