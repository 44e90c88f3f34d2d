"""The backfill and enrichment example DAGs, run end to end with dag.test()."""

from __future__ import annotations

import json

import pytest

from airflow_bettertoken.testing.samples import sample_image
from airflow_bettertoken.testing.sandbox import return_values
from tests.airflow_versions import load_dag

pytestmark = pytest.mark.usefixtures("airflow_db")


def test_backfill_pays_only_for_missing_outputs_and_writes_a_manifest(s3, buckets, emulator):
    names = [
        f"shelf-{shelf}/item-{item:02}.{'png' if item % 2 else 'jpg'}" for shelf in "ab" for item in range(10)
    ]
    for seed, name in enumerate(names):
        s3.put_object(Bucket=buckets.src, Key=f"catalog/{name}", Body=sample_image(96, 64, name[-3:], seed))
    done = ["shelf-a/item-00", "shelf-b/item-05"]
    for stem in done:
        s3.put_object(Bucket=buckets.out, Key=f"catalog-edited/{stem}.png", Body=sample_image(50, 40))
    emulator.configure(size_map={"1536x1024": "1536x1008"})
    dag = load_dag("bettertoken_backfill")

    conf = {"in_bucket": buckets.src, "out_bucket": buckets.out, "size": "1536x1024"}
    run = dag.test(run_conf=conf)

    assert run.state == "success"
    assert emulator.stats()["paid"] == 18
    manifest = json.loads(
        s3.get_object(Bucket=buckets.out, Key="catalog-edited/_manifest.json")["Body"].read()
    )
    assert (manifest["dag_id"], manifest["run_id"]) == ("bettertoken_backfill", run.run_id)
    assert manifest["counts"] == {"planned": 20, "done": 18, "skipped": 2, "failed": 0}
    assert manifest["failed_sources"] == []
    assert len(manifest["size_mismatches"]) == 18  # the emulator returns 1536x1008 for 1536x1024
    assert manifest["size_mismatches"][0] == {
        "output_uri": f"s3://{buckets.out}/catalog-edited/shelf-a/item-01.png",
        "requested_size": "1536x1024",
        "width": 1536,
        "height": 1008,
    }
    assert manifest["usage"] == {
        "input_tokens": 18 * 150,
        "output_tokens": 18 * 1000,
        "total_tokens": 18 * 1150,
    }
    outputs = {o["output_uri"]: o for o in manifest["outputs"]}
    assert sorted(outputs) == sorted(
        f"s3://{buckets.out}/catalog-edited/{n.rsplit('.', 1)[0]}.png" for n in names
    )
    for stem in done:
        kept = outputs[f"s3://{buckets.out}/catalog-edited/{stem}.png"]
        assert (kept["skipped"], kept["width"], kept["height"]) == (True, 50, 40)
    fresh = outputs[f"s3://{buckets.out}/catalog-edited/shelf-b/item-09.png"]
    assert (fresh["skipped"], fresh["width"], fresh["height"], fresh["requested_size"]) == (
        False,
        1536,
        1008,
        "1536x1024",
    )
    assert fresh["bytes"] > 0 and len(fresh["sha256"]) == 64

    rerun = dag.test(run_conf=conf)
    assert rerun.state == "success"
    assert emulator.stats()["paid"] == 18  # a rerun pays for nothing
    assert all(r["skipped"] for r in return_values(dag.dag_id, rerun.run_id, "edit_image"))


def test_enrichment_reports_one_asset_event_per_output(s3, buckets, emulator):
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    conf = {"in_bucket": buckets.src, "out_bucket": buckets.out}
    for index in range(4):
        s3.put_object(
            Bucket=buckets.src, Key=f"samples/shot-{index}.jpg", Body=sample_image(320, 240, "jpg", index)
        )
    producer = load_dag("bettertoken_incoming_producer")
    assert producer.test(run_conf={**conf, "images": 3}).state == "success"
    enrichment = load_dag("bettertoken_enrichment")

    run = enrichment.test(run_conf=conf)

    assert run.state == "success"
    results = return_values(enrichment.dag_id, run.run_id, "edit_image")
    assert len(results) == 3 and not any(r["skipped"] for r in results)
    assert all(r["key"].startswith("enriched/") for r in results)
    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).where(
                AssetEvent.source_dag_id == enrichment.dag_id, AssetEvent.source_run_id == run.run_id
            )
        ).all()
        uris = sorted(event.asset.uri for event in events)
    assert uris == sorted(r["output_uri"] for r in results)
    consumer = load_dag("bettertoken_edited_consumer")
    assert consumer.test().state == "success"


def test_a_run_over_max_map_length_says_how_to_split_it(s3, buckets, emulator, monkeypatch, task_context):
    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator

    for index in range(4):
        s3.put_object(Bucket=buckets.src, Key=f"set/{index}.png", Body=sample_image(20, 20))
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "3")
    op = BetterTokenListImagesOperator(
        task_id="list", source_prefix=f"s3://{buckets.src}/set/", dest_prefix=f"s3://{buckets.out}/set/"
    )
    with pytest.raises(
        AirflowFailException, match=r"4 images .* exceed \[core\] max_map_length=3\. Run them in chunks"
    ):
        op.execute(task_context)
