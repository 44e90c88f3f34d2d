"""The example DAGs: they import cleanly and run end to end with dag.test()."""

from __future__ import annotations

import warnings

import pendulum
import pytest

from airflow_bettertoken.protocol.png import verify_png
from airflow_bettertoken.testing.samples import sample_image
from airflow_bettertoken.testing.sandbox import return_values
from tests.airflow_versions import dagbag, load_dag

DAY = "2026-11-26"


def test_example_dags_import_without_errors_or_our_deprecation_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = dagbag()
    assert bag.import_errors == {}
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
