"""When Airflow no longer keeps a task's rendered fields, the gallery trusts the output's own S3
metadata instead: it must name this very task instance, and the sources XCom reports."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import pendulum
import pytest
import requests
from sqlalchemy import delete

from airflow_bettertoken.testing.samples import sample_image
from tests.airflow_versions import load_dag
from tests.integration.gallery.conftest import BACKFILL, SCHEDULED, reason_for_patched, xcom_url

DAYS = ("2026-11-23", "2026-11-24")


def forget_rendered_fields(run_id: str) -> None:
    """What Airflow does to a task's older runs: their rendered fields are deleted."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as Rendered
    from airflow.utils.session import create_session

    with create_session() as session:
        session.execute(delete(Rendered).where(Rendered.dag_id == SCHEDULED, Rendered.run_id == run_id))


@pytest.fixture(scope="module")
def old_runs(s3, sandbox, runs, server):
    """Two scheduled runs whose rendered fields are gone; the second's output is then forged to name a
    real output of another DAG, which its S3 metadata says another task instance wrote."""
    sandbox.emulator.control.reset()
    src, out = f"oin-{uuid.uuid4().hex[:8]}", f"oout-{uuid.uuid4().hex[:8]}"
    for bucket in (src, out):
        s3.create_bucket(Bucket=bucket)
    dag, run_ids = load_dag(SCHEDULED), []
    for day in DAYS:
        s3.put_object(Bucket=src, Key=f"incoming/{day}/cup.png", Body=sample_image(200, 200))
        run = dag.test(logical_date=pendulum.parse(day), run_conf={"in_bucket": src, "out_bucket": out})
        forget_rendered_fields(run.run_id)
        run_ids.append(run.run_id)
    admin = {"Authorization": f"Bearer {server.token('admin')}"}
    entry = f"{xcom_url(server, SCHEDULED, run_ids[1], 'edit_image')}/return_value"
    real = requests.get(entry, params={"map_index": 0}, headers=admin, timeout=60).json()["value"]
    backfill_output = requests.get(
        f"{xcom_url(server, BACKFILL, runs[BACKFILL], 'edit_image')}/return_value",
        params={"map_index": 2},
        headers=admin,
        timeout=60,
    ).json()["value"]["output_uri"]
    forged = {**real, "output_uri": backfill_output}
    answer = requests.patch(entry, json={"value": forged, "map_index": 0}, headers=admin, timeout=60)
    assert answer.status_code == 200, answer.text[:300]
    stored = requests.get(entry, params={"map_index": 0}, headers=admin, timeout=60).json()["value"]
    return {"runs": run_ids, "patched_is_a_record": reason_for_patched(stored) != "is not an edit's record"}


def get(server, run_id, path="", user="alice", **params):
    url = f"{server.url}/bettertoken/dags/{SCHEDULED}/runs/{quote(run_id, safe='')}{path}"
    return requests.get(
        url, params=params, headers={"Authorization": f"Bearer {server.token(user)}"}, timeout=60
    )


def test_an_output_whose_metadata_names_its_task_instance_is_shown(server, old_runs):
    run_id = old_runs["runs"][0]
    html = get(server, run_id).text
    output = get(server, run_id, "/image", task_id="edit_image", map_index=0, which="output", size="full")

    assert "checked against the output&#x27;s S3 metadata (this task instance wrote it)" in html
    assert html.count("<img") == 2 and output.status_code == 200
    assert output.headers["content-type"] == "image/png"


def test_xcom_forged_to_name_another_dags_output_shows_no_image(server, old_runs):
    """alice may read this DAG only; the forged XCom names an output of the backfill DAG."""
    run_id = old_runs["runs"][1]
    html = get(server, run_id).text
    answers = [
        get(server, run_id, "/image", task_id="edit_image", map_index=0, which=which, size=size)
        for which in ("output", "source-0")
        for size in ("thumb", "full")
    ]

    assert "not verified: " in html and "<img" not in html
    if old_runs["patched_is_a_record"]:  # Airflow 3.2+ (3.0 and 3.1 store a PATCHed value as a string)
        assert "the output its XCom names does not carry this task instance&#x27;s name" in html
    assert [answer.status_code for answer in answers] == [404] * 4
