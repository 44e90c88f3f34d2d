"""The backfill and enrichment example DAGs, run end to end with dag.test()."""

from __future__ import annotations

import json

import pytest

from airflow_bettertoken.testing.samples import sample_image
from airflow_bettertoken.testing.sandbox import return_values
from tests.airflow_versions import load_dag

pytestmark = pytest.mark.usefixtures("airflow_db")


def read_json(s3, bucket: str, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def run_manifests(s3, bucket: str, folder: str) -> dict[str, dict]:
    """Every run's manifest under ``folder``, by run id."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{folder}_manifests/").get("Contents", [])
    manifests = [read_json(s3, bucket, item["Key"]) for item in listed]
    return {manifest["run_id"]: manifest for manifest in manifests}


def test_backfill_pays_only_for_missing_outputs_and_writes_a_manifest(s3, buckets, emulator):
    names = [
        f"shelf-{shelf}/item-{item:02}.{'png' if item % 2 else 'jpg'}" for shelf in "ab" for item in range(5)
    ]
    for seed, name in enumerate(names):
        s3.put_object(Bucket=buckets.src, Key=f"catalog/{name}", Body=sample_image(96, 64, name[-3:], seed))
    done = ["shelf-a/item-00", "shelf-b/item-03"]
    for stem in done:
        s3.put_object(Bucket=buckets.out, Key=f"catalog-edited/{stem}.png", Body=sample_image(50, 40))
    usage = {"input_tokens": 150, "output_tokens": 1000, "total_tokens": 1150}
    emulator.configure(size_map={"1536x1024": "1536x1008"}, usage=usage)
    dag = load_dag("bettertoken_backfill")

    conf = {"in_bucket": buckets.src, "out_bucket": buckets.out, "size": "1536x1024"}
    run = dag.test(run_conf=conf)

    assert run.state == "success"
    assert emulator.stats()["paid"] == 8
    manifest = run_manifests(s3, buckets.out, "catalog-edited/")[run.run_id]
    assert manifest["dag_id"] == "bettertoken_backfill"
    # The listing planned only the 8 images without an output: the 2 done ones cost no task at all.
    assert manifest["counts"] == {"planned": 8, "done": 8, "skipped": 0, "failed": 0}
    assert manifest["listing"] == {
        "images": 10,
        "done": 2,
        "pending": 8,
        "planned": 8,
        "remaining": 0,
        "failed_for_good": 0,
    }
    assert (manifest["remaining"], manifest["next_run_id"], manifest["failures"]) == (0, None, [])
    assert len(manifest["size_mismatches"]) == 8  # the emulator returns 1536x1008 for 1536x1024
    assert manifest["size_mismatches"][0] == {
        "output_uri": f"s3://{buckets.out}/catalog-edited/shelf-a/item-01.png",
        "requested_size": "1536x1024",
        "width": 1536,
        "height": 1008,
    }
    # The spend comes from the outputs' ledgers: one POST per image, each paid and stored.
    assert manifest["spend"] == {
        "posts": 8,
        "paid": 8,
        "maybe_billed": 0,
        "images_stored": 8,
        "billed_without_image": 0,
        "stopped_by_budget": 0,
        "stopped_by_run": 0,
        # No price table in the connection: every call is counted, none priced.
        "calls_unpriced": 8,
        "cost": "0",
        "cost_estimated": "0",
    }
    assert manifest["usage"] == {
        "input_tokens": 8 * 150,
        "output_tokens": 8 * 1000,
        "total_tokens": 8 * 1150,
    }
    outputs = {o["output_uri"]: o for o in manifest["outputs"]}
    assert sorted(outputs) == sorted(
        f"s3://{buckets.out}/catalog-edited/{n.rsplit('.', 1)[0]}.png"
        for n in names
        if n.rsplit(".", 1)[0] not in done
    )
    fresh = outputs[f"s3://{buckets.out}/catalog-edited/shelf-b/item-04.png"]
    assert (fresh["skipped"], fresh["width"], fresh["height"], fresh["requested_size"]) == (
        False,
        1536,
        1008,
        "1536x1024",
    )
    assert fresh["bytes"] > 0 and len(fresh["sha256"]) == 64

    rerun = dag.test(run_conf=conf)
    assert rerun.state == "success"
    assert emulator.stats()["paid"] == 8  # a rerun pays for nothing...
    assert return_values(dag.dag_id, rerun.run_id, "edit_image") == []  # ...and runs no edit task
    states = {ti.task_id: ti.state for ti in rerun.get_task_instances()}
    assert states["edit_image"] == "skipped"

    # The skip-only rerun kept the first run's record, and the summary counts both runs.
    manifests = run_manifests(s3, buckets.out, "catalog-edited/")
    assert manifests[run.run_id]["counts"] == manifest["counts"]
    assert manifests[rerun.run_id]["counts"] == {"planned": 0, "done": 0, "skipped": 0, "failed": 0}
    summary = read_json(s3, buckets.out, "catalog-edited/_manifest.json")
    assert (summary["runs"], summary["images_done"], summary["spend"]["posts"]) == (2, 8, 8)
    assert summary["spend"] == manifest["spend"]  # the rerun spent nothing
    assert summary["usage"]["total_tokens"] == 8 * 1150
    assert summary["latest_run"]["run_id"] == rerun.run_id
    assert summary["last_failures"] == []


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


def test_a_listing_over_max_map_length_plans_a_chunk_and_counts_the_rest(
    s3, buckets, emulator, monkeypatch, task_context
):
    from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator

    for index in range(4):
        s3.put_object(Bucket=buckets.src, Key=f"set/{index}.png", Body=sample_image(20, 20))
    monkeypatch.setenv("AIRFLOW__CORE__MAX_MAP_LENGTH", "3")
    op = BetterTokenListImagesOperator(
        task_id="list", source_prefix=f"s3://{buckets.src}/set/", dest_prefix=f"s3://{buckets.out}/set/"
    )
    edits = op.execute(task_context)
    assert [e["source"] for e in edits] == [f"s3://{buckets.src}/set/{index}.png" for index in range(3)]
    assert task_context["ti"].xcoms["counts"] == {
        "images": 4,
        "done": 0,
        "pending": 4,
        "planned": 3,
        "remaining": 1,
        "failed_for_good": 0,
        "format": 1,
    }


def test_a_listing_skips_keys_without_a_safe_output_path_edits_the_rest_and_records_them(
    s3, buckets, emulator
):
    good = ["catalog/a.jpg", "catalog/shelf/b.png"]
    bad = {"catalog//c.jpg": "an empty path segment ('//')", "catalog/../d.jpg": "a '..' path segment"}
    for seed, key in enumerate([*good, *bad]):
        s3.put_object(Bucket=buckets.src, Key=key, Body=sample_image(48, 32, key[-3:], seed))
    conf = {"in_bucket": buckets.src, "out_bucket": buckets.out}

    run = load_dag("bettertoken_backfill").test(run_conf=conf)

    assert run.state == "success"
    assert emulator.stats()["paid"] == 2
    written = sorted(
        i["Key"] for i in s3.list_objects_v2(Bucket=buckets.out, Prefix="catalog-edited/")["Contents"]
    )
    assert [key for key in written if key.endswith(".png")] == [
        "catalog-edited/a.png",
        "catalog-edited/shelf/b.png",
    ]
    manifest = run_manifests(s3, buckets.out, "catalog-edited/")[run.run_id]
    assert manifest["counts"] == {"planned": 2, "done": 2, "skipped": 0, "failed": 0}
    findings = manifest["findings"]
    assert findings["skipped_total"] == 2
    assert findings["skipped_keys"] == [
        {"key": key, "reason": f"its path has {reason}, so it has no safe output key"}
        for key, reason in sorted(bad.items())
    ]
    assert findings["store"]["conditional_writes"] is True
