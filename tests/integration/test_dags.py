"""The example DAGs: they import cleanly and run end to end with dag.test()."""

from __future__ import annotations

import warnings

import pendulum
import pytest

from airflow_bettertoken.protocol.png import verify_png
from airflow_bettertoken.testing.samples import sample_image
from airflow_bettertoken.testing.sandbox import return_values
from tests.airflow_versions import dagbag, load_dag, unexpected_import_errors

DAY = "2026-11-26"


def test_example_dags_import_without_errors_or_our_deprecation_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = dagbag()
    assert unexpected_import_errors(bag) == {}
    assert "bettertoken_scheduled_edit" in bag.dag_ids
    ours = [
        w
        for w in caught
        if issubclass(w.category, DeprecationWarning)
        and ("airflow_bettertoken" in w.filename or "dags" in w.filename)
    ]
    assert ours == []


@pytest.mark.usefixtures("airflow_db")
def test_scheduled_edit_maps_over_the_days_images(s3, buckets, emulator):
    names = {"a.png": "png", "nested/b.jpg": "jpg", "c.webp": "webp"}
    for seed, (name, fmt) in enumerate(names.items()):
        s3.put_object(
            Bucket=buckets.src, Key=f"incoming/{DAY}/{name}", Body=sample_image(200, 150, fmt, seed)
        )
    s3.put_object(Bucket=buckets.src, Key=f"incoming/{DAY}/readme.txt", Body=b"not an image")
    dag = load_dag("bettertoken_scheduled_edit")

    run = dag.test(
        logical_date=pendulum.parse(DAY),
        run_conf={"in_bucket": buckets.src, "out_bucket": buckets.out, "size": "1024x1024"},
    )

    assert run.state == "success"
    results = return_values(dag.dag_id, run.run_id, "edit_image")
    assert sorted(r["key"] for r in results) == [
        f"edited/{DAY}/a.png",
        f"edited/{DAY}/c.png",
        f"edited/{DAY}/nested/b.png",
    ]
    assert all((r["width"], r["height"], r["skipped"]) == (1024, 1024, False) for r in results)
    assert emulator.stats()["paid"] == 3
    for r in results:
        assert verify_png(s3.get_object(Bucket=r["bucket"], Key=r["key"])["Body"].read()).width == 1024


@pytest.mark.usefixtures("airflow_db")
def test_scheduled_edit_skips_a_day_without_images(buckets, emulator):
    dag = load_dag("bettertoken_scheduled_edit")
    run = dag.test(
        logical_date=pendulum.parse(DAY), run_conf={"in_bucket": buckets.src, "out_bucket": buckets.out}
    )
    assert run.state == "success"
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["list_todays_images"] == "success"
    assert states["edit_image"] == "skipped"
    assert emulator.stats()["posts"] == 0


@pytest.mark.usefixtures("airflow_db")
def test_the_reviewed_backfill_with_review_off_publishes_at_once_and_waits_for_no_one(s3, buckets, emulator):
    from airflow_bettertoken.operators._hitl import HAS_HITL

    if not HAS_HITL:
        pytest.skip("Airflow 3.0 has no human-in-the-loop tasks; the DAG fails at parse time there")
    for seed, name in enumerate(["a.png", "b.png"]):
        s3.put_object(Bucket=buckets.src, Key=f"catalog/{name}", Body=sample_image(120, 90, seed=seed))
    dag = load_dag("bettertoken_reviewed_backfill")

    run = dag.test(run_conf={"in_bucket": buckets.src, "out_bucket": buckets.out})

    assert run.state == "success"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=buckets.out)["Contents"])
    assert [k for k in keys if k.endswith(".png")] == ["catalog-edited/a.png", "catalog-edited/b.png"]
    assert not [k for k in keys if k.startswith(("_bettertoken/staging/", "_bettertoken/reviews/"))]
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert (states["review"], states["reedit_image"], states["review_reedits"]) == (
        "success",
        "skipped",
        "success",
    )
    assert emulator.stats()["paid"] == 2
