"""A DAG built with catalog_backfill, run end to end with dag.test() on the emulator and moto.

The example DAGs use it too (test_dags.py, test_pipelines.py); this one prefixes the task ids, as two
backfills in one DAG must, and chains a second chunk.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from airflow_bettertoken.storage.chain import next_chunk_run_id
from airflow_bettertoken.testing.samples import sample_image
from airflow_bettertoken.testing.sandbox import return_values
from tests.airflow_versions import dagbag

pytestmark = pytest.mark.usefixtures("airflow_db")

LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"
# dag.test() runs a DAG from a bundle it serializes, so the DAG is a file in a bundle of its own.
DAG_FILE = """
import pendulum
from airflow.sdk import DAG

from airflow_bettertoken import catalog_backfill

with DAG(
    dag_id="catalog_backfill_test",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    max_active_runs=1,
    params={"in_bucket": "in", "out_bucket": "out"},
):
    catalog_backfill(
        source_prefix="s3://{{ params.in_bucket }}/catalog/",
        dest_prefix="s3://{{ params.out_bucket }}/edited/",
        prompt="Put the product on a plain white background",
        size="1024x1024",
        max_edits_per_run=2,
        until_done=True,
        pool=None,
        max_billed_calls=1,
        group_id="shoes",
        prefix_group_id=True,
    )
"""


@pytest.fixture
def backfill_dag(tmp_path, monkeypatch):
    (tmp_path / "catalog_backfill_test.py").write_text(DAG_FILE)
    bundles = [
        {"name": "dags-folder", "classpath": LOCAL_BUNDLE, "kwargs": {}},
        {"name": "catalog-backfill-tests", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(tmp_path)}},
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    bag = dagbag(tmp_path)
    assert dict(bag.import_errors) == {}  # this bundle holds only the test's DAG
    # Serialized as a DAG processor would: the next chunk triggers a run of this DAG, which Airflow
    # 3.0's API finds only in its tables (dag.test() alone does not put it there on 3.0).
    reserialize = [sys.executable, "-m", "airflow", "dags", "reserialize", "-B", "catalog-backfill-tests"]
    subprocess.run(reserialize, check=True, capture_output=True)
    return bag.dags["catalog_backfill_test"]


def test_a_prefixed_backfill_edits_a_chunk_records_it_and_triggers_the_next(
    s3, buckets, emulator, backfill_dag
):
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    for seed, name in enumerate(["a.png", "b.jpg", "shelf/c.png"]):
        s3.put_object(Bucket=buckets.src, Key=f"catalog/{name}", Body=sample_image(64, 48, name[-3:], seed))
    dag = backfill_dag

    run = dag.test(run_conf={"in_bucket": buckets.src, "out_bucket": buckets.out})

    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {
        "shoes.list_images": "success",
        "shoes.edit_image": "success",
        "shoes.next_chunk": "success",
        "shoes.write_manifest": "success",
    }
    assert emulator.stats()["paid"] == 2
    results = return_values(dag.dag_id, run.run_id, "shoes.edit_image")
    assert [r["key"] for r in results] == ["edited/a.png", "edited/b.png"]
    (listed,) = s3.list_objects_v2(Bucket=buckets.out, Prefix="edited/_manifests/")["Contents"]
    manifest = json.loads(s3.get_object(Bucket=buckets.out, Key=listed["Key"])["Body"].read())
    assert manifest["run_id"] == run.run_id
    assert manifest["counts"] == {"planned": 2, "done": 2, "skipped": 0, "failed": 0}
    assert (manifest["remaining"], manifest["next_run_id"]) == (1, next_chunk_run_id(run.run_id))
    with create_session() as session:
        chained = session.query(DagRun).filter_by(dag_id=dag.dag_id, run_id=manifest["next_run_id"]).one()
        assert chained.state == "queued"
