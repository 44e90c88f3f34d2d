"""The gallery's trust rule: which S3 objects a row may show, from records the REST API cannot forge.

A table of XCom reports (true and forged) against the rendered fields and the output's S3 metadata.
"""

from __future__ import annotations

import dataclasses

import pytest

from airflow_bettertoken.plugins._edit_tasks import AwsConnection, EditTask
from airflow_bettertoken.plugins._rows import TaskInstanceRef
from airflow_bettertoken.plugins._trust import (
    BY_RENDERED_FIELDS,
    BY_S3_METADATA,
    Reported,
    choose_connection,
    decide,
)
from airflow_bettertoken.protocol.result import EditFailure, EditXCom, made_by_metadata, sources_metadata

TI = TaskInstanceRef("catalog", "manual__1", "edit_image", 0)
OTHER_TI = dataclasses.replace(TI, map_index=1)
SOURCE, DEST, OUTPUT = "s3://in/catalog/mug.jpg", "s3://out/edited/", "s3://out/edited/mug.png"
SECRET_TEXT, SECRET_IMAGE = "s3://secret/passwords.txt", "s3://secret/plans.png"
RENDERED = {"source": SOURCE, "dest": DEST, "aws_conn_id": "aws_task"}
CONN = AwsConnection("aws_task", "the task's rendered aws_conn_id")
RESULT = EditXCom(
    output_uri=OUTPUT,
    width=1000,
    height=1000,
    requested_size="1024x1024",
    nbytes=10,
    sha256="ab" * 32,
    model="gpt-image-2",
    source_uris=[SOURCE],
    aws_conn_id="aws_task",
)
FAILURE = EditFailure(
    source=SOURCE, dest=DEST, error="BetterTokenInputError", reason="no", aws_conn_id="aws_task"
)
FORGED = dataclasses.replace(
    RESULT, output_uri=SECRET_IMAGE, source_uris=[SECRET_TEXT], aws_conn_id="aws_secret"
)


def metadata(ti=TI, sources=(SOURCE,)):
    return {"png-sha256": "ab" * 32, **sources_metadata(list(sources)), **made_by_metadata(ti)}


edited = dataclasses.replace
BY_RENDERED, BY_S3 = BY_RENDERED_FIELDS, BY_S3_METADATA
TRUNCATED = {"source": "Truncated. You can change this behaviour in [core]max_templated_field_length. "}
CASES = {
    # reported, rendered, connection, S3 metadata of objects -> (output, sources, checked against) or reason
    "rendered-agree": (Reported(RESULT), RENDERED, CONN, {}, (OUTPUT, [SOURCE], BY_RENDERED)),
    "rendered-skipped-edit": (
        Reported(edited(RESULT, skipped=True)), RENDERED, CONN, {}, (OUTPUT, [SOURCE], BY_RENDERED),
    ),
    "rendered-failed-edit": (Reported(failure=FAILURE), RENDERED, CONN, {}, (None, [SOURCE], BY_RENDERED)),
    "rendered-not-yet-reported": (Reported(), RENDERED, CONN, {}, (None, [SOURCE], BY_RENDERED)),
    "rendered-multi-source": (
        Reported(edited(RESULT, source_uris=[SOURCE, "s3://in/b.png"])),
        {**RENDERED, "source": [SOURCE, "s3://in/b.png"]},
        CONN, {}, (OUTPUT, [SOURCE, "s3://in/b.png"], BY_RENDERED),
    ),
    "forged-output-and-sources": (Reported(FORGED), RENDERED, CONN, {}, "names other objects than"),
    "forged-output-only": (
        Reported(edited(RESULT, output_uri=SECRET_IMAGE)), RENDERED, CONN, {}, "names other objects",
    ),
    "forged-extra-source": (
        Reported(edited(RESULT, source_uris=[SOURCE, SECRET_IMAGE])), RENDERED, CONN, {}, "other objects",
    ),
    "forged-connection": (
        Reported(edited(RESULT, aws_conn_id="aws_secret")), RENDERED, CONN, {}, "another AWS connection",
    ),
    "forged-failure": (
        Reported(failure=edited(FAILURE, source=SECRET_TEXT, aws_conn_id="aws_secret")),
        RENDERED, CONN, {}, "failure record names other objects",
    ),
    "failed-on-a-source-that-is-no-uri": (
        Reported(failure=edited(FAILURE, source="mug.jpg")), {**RENDERED, "source": "mug.jpg"}, CONN, {},
        (None, [], BY_RENDERED),
    ),
    "unreadable": (Reported(unreadable="return_value"), RENDERED, CONN, {}, "is not an edit's record"),
    "nothing-recorded": (Reported(), None, CONN, {}, (None, [], None)),
    "metadata-agrees": (
        Reported(RESULT), None, CONN, {("aws_task", OUTPUT): metadata()}, (OUTPUT, [SOURCE], BY_S3),
    ),
    "metadata-after-truncated-fields": (
        Reported(RESULT), TRUNCATED, CONN, {("aws_task", OUTPUT): metadata()}, (OUTPUT, [SOURCE], BY_S3),
    ),
    "metadata-forged-to-a-foreign-object": (
        Reported(FORGED), None, CONN, {("aws_task", SECRET_IMAGE): {"owner": "finance"}}, "does not carry",
    ),
    "metadata-forged-to-a-missing-object": (Reported(FORGED), None, CONN, {}, "does not carry"),
    "metadata-forged-to-another-tasks-output": (
        Reported(RESULT), None, CONN, {("aws_task", OUTPUT): metadata(OTHER_TI)}, "does not carry",
    ),
    "metadata-forged-sources": (
        Reported(edited(RESULT, source_uris=[SECRET_TEXT])), None, CONN,
        {("aws_task", OUTPUT): metadata()}, "not those recorded",
    ),
    "metadata-of-an-older-output": (
        Reported(RESULT), None, CONN, {("aws_task", OUTPUT): {"sources": f'["{SOURCE}"]'}}, "does not carry",
    ),
    "metadata-failure-only": (Reported(failure=FAILURE), None, CONN, {}, "wrote no output"),
    "no-connection-rendered": (Reported(RESULT), RENDERED, None, {}, "does not know the task's AWS"),
    "no-connection-metadata": (Reported(RESULT), None, None, {}, "connection to check its output with"),
}  # fmt: skip


@pytest.mark.parametrize(
    ("reported", "rendered", "conn", "objects", "expected"), CASES.values(), ids=CASES.keys()
)
def test_a_row_shows_only_what_a_trusted_record_names(reported, rendered, conn, objects, expected):
    asked = []

    def head(aws_conn, location):
        asked.append((aws_conn.conn_id, location.uri))
        return objects.get((aws_conn.conn_id, location.uri))

    shown = decide(TI, reported, rendered, conn, head, no_rendered_fields="no rendered fields")

    if isinstance(expected, str):
        assert shown.reason and expected in shown.reason, shown
        assert (shown.output, shown.sources, shown.aws_conn) == (None, (), None)
    else:
        output, sources, checked_against = expected
        assert shown.reason is None, shown.reason
        assert (shown.output.uri if shown.output else None, [s.uri for s in shown.sources]) == (
            output,
            sources,
        )
        assert shown.checked_against == checked_against
        assert shown.aws_conn == (conn if output or sources else shown.aws_conn)
    # S3 is asked only when the rendered fields cannot decide, and only with the trusted connection.
    assert all(conn_id == "aws_task" for conn_id, _ in asked)
    if rendered is RENDERED:
        assert asked == []


TASK = EditTask("edit_image", AwsConnection("aws_dag", "the DAG"))
CONNECTIONS = {
    "admin-setting-first": ("aws_gallery", RENDERED, TASK, "aws_gallery"),
    "rendered-next": (None, RENDERED, TASK, "aws_task"),
    "rendered-none-is-the-default-chain": (None, {**RENDERED, "aws_conn_id": None}, TASK, None),
    "the-dag-when-not-rendered": (None, {"source": SOURCE, "dest": DEST}, TASK, "aws_dag"),
    "the-dag-when-rendered-fields-are-gone": (None, None, TASK, "aws_dag"),
    "unknown": (None, None, EditTask("edit_image", None), "unknown"),
}


@pytest.mark.parametrize(
    ("admin", "rendered", "task", "expected"), CONNECTIONS.values(), ids=CONNECTIONS.keys()
)
def test_the_connection_comes_from_an_admin_the_rendered_fields_or_the_dag_never_xcom(
    admin, rendered, task, expected
):
    chosen = choose_connection(admin, rendered, task)
    assert (chosen.conn_id if chosen else "unknown") == expected


PAYS = (("RequestPayer", "requester"),)
OWNER = (("ExpectedBucketOwner", "123456789012"),)
DAG_PAYS = EditTask("edit_image", AwsConnection("aws_dag", "the DAG"), read_args=PAYS)
RENDERED_OWNER = {**RENDERED, "s3_extra_args": {"ExpectedBucketOwner": "123456789012", "ACL": "private"}}
READ_ARGS = {
    "rendered-first-and-only-the-read-arguments": (None, RENDERED_OWNER, DAG_PAYS, OWNER),
    "with-an-admins-connection-too": ("aws_gallery", RENDERED_OWNER, DAG_PAYS, OWNER),
    "the-dag-when-rendered-fields-are-gone": (None, None, DAG_PAYS, PAYS),
    "the-dag-when-rendered-is-cut-short": (
        None,
        {**RENDERED, "s3_extra_args": "{'RequestPa..."},
        DAG_PAYS,
        PAYS,
    ),
    "none-when-the-dag-templates-them": (None, None, dataclasses.replace(DAG_PAYS, read_args=None), ()),
}


@pytest.mark.parametrize(("admin", "rendered", "task", "expected"), READ_ARGS.values(), ids=READ_ARGS.keys())
def test_the_read_arguments_come_from_the_rendered_fields_or_the_dag(admin, rendered, task, expected):
    assert choose_connection(admin, rendered, task).read_args == expected


def test_the_dag_fixes_read_arguments_given_to_partial_or_to_the_operator():
    import pendulum
    from airflow.sdk import DAG

    from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
    from airflow_bettertoken.plugins._edit_tasks import edit_tasks_of
    from tests.airflow_versions import serialize_dag

    edit = {"prompt": "p", "dest": "s3://b/o/"}
    with DAG("d", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        pays = {"RequestPayer": "requester", "ACL": "private"}
        BetterTokenImageEditOperator.partial(task_id="m", s3_extra_args=pays, **edit).expand(
            source=["s3://b/a"]
        )
        BetterTokenImageEditOperator(task_id="u", source="s3://b/a", s3_extra_args=dict(OWNER), **edit)
        templated = {"RequestPayer": "{{ params.payer }}"}
        BetterTokenImageEditOperator(task_id="t", source="s3://b/a", s3_extra_args=templated, **edit)
        BetterTokenImageEditOperator(task_id="n", source="s3://b/a", **edit)
    tasks = edit_tasks_of(serialize_dag(dag))
    assert {task_id: task.read_args for task_id, task in tasks.items()} == {
        "m": PAYS,
        "u": OWNER,
        "t": None,
        "n": (),
    }
