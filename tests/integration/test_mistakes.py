"""The five mistakes new users make, each run through the backfill DAG against the emulator and moto.

For each: the run's final state, the POSTs to /images/edits, the message the user reads, and what
was written. The ones every task would repeat fail once, in the listing's preflight, before paying.
"""

from __future__ import annotations

import json

import pytest

from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator
from airflow_bettertoken.testing.samples import sample_image
from tests.airflow_versions import load_dag
from tests.integration.test_pipelines import read_json, run_manifests

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def catalog(s3, buckets):
    for index in range(3):
        s3.put_object(
            Bucket=buckets.src, Key=f"catalog/item-{index}.jpg", Body=sample_image(64, 48, "jpg", index)
        )
    return {"in_bucket": buckets.src, "out_bucket": buckets.out}


def objects(s3, bucket: str) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def listing_error(task_context, conf: dict) -> str:
    """What the listing task says when it fails: the one message the user reads."""
    op = BetterTokenListImagesOperator(
        task_id="list_images",
        source_prefix=f"s3://{conf['in_bucket']}/catalog/",
        dest_prefix=f"s3://{conf['out_bucket']}/catalog-edited/",
    )
    with pytest.raises(Exception) as info:
        op.execute(task_context)
    return str(info.value)


def define_default_connection(monkeypatch, sandbox, **changes) -> None:
    conn = {
        "conn_type": "bettertoken",
        "host": sandbox.emulator.base_url,
        "password": sandbox.api_key,
        **changes,
    }
    monkeypatch.setenv("AIRFLOW_CONN_BETTERTOKEN_DEFAULT", json.dumps(conn))


def run_backfill(conf: dict):
    run = load_dag("bettertoken_backfill").test(run_conf=conf)
    return run, {ti.task_id: ti.state for ti in run.get_task_instances()}


def test_a_wrong_key_fails_once_in_the_preflight_naming_the_connection_and_field(
    s3, buckets, catalog, emulator, sandbox, monkeypatch, task_context, api_key
):
    define_default_connection(monkeypatch, sandbox, password="sk-wrong-key-0123456789")

    run, states = run_backfill(catalog)
    message = listing_error(task_context, catalog)

    assert run.state == "failed"
    assert (states["list_images"], states["edit_image"]) == ("failed", "upstream_failed")
    assert emulator.stats()["posts"] == 0
    assert "answered 401" in message and "GET " in message and "/v1/models" in message
    assert "connection 'bettertoken_default'" in message
    assert "it belongs in the password field ('API Key' in the UI)" in message
    assert "sk-wrong-key-0123456789" not in message and api_key not in message
    assert objects(s3, buckets.out) == []


def test_a_missing_destination_bucket_fails_once_before_paying(catalog, emulator, task_context):
    conf = {**catalog, "out_bucket": "no-such-bucket-here"}

    run, states = run_backfill(conf)
    message = listing_error(task_context, conf)

    assert run.state == "failed"
    assert states["edit_image"] == "upstream_failed"
    assert emulator.stats()["posts"] == 0
    assert "destination bucket 'no-such-bucket-here' does not exist" in message
    assert "create the bucket or fix the dest prefix" in message


def test_a_bad_size_is_refused_when_the_run_is_triggered(catalog, emulator):
    from airflow.providers.common.compat.sdk import ParamValidationError

    # Airflow 3.2's dag.test() raises a plain ValueError with the same message.
    with pytest.raises((ParamValidationError, ValueError), match="1024x768' is not one of"):
        load_dag("bettertoken_backfill").test(run_conf={**catalog, "size": "1024x768"})
    assert emulator.stats()["posts"] == 0


def test_a_base_url_without_v1_says_so_and_suggests_the_fix(
    s3, buckets, catalog, emulator, sandbox, monkeypatch, task_context
):
    without_v1 = sandbox.emulator.root_url
    define_default_connection(monkeypatch, sandbox, host=without_v1)

    run, states = run_backfill(catalog)
    message = listing_error(task_context, catalog)

    assert run.state == "failed"
    assert states["edit_image"] == "upstream_failed"
    assert emulator.stats()["posts"] == 0
    assert f"answered 404 (no code) to GET {without_v1}/models" in message
    assert f"is {without_v1}, without /v1; the base URL is probably {without_v1}/v1" in message
    assert objects(s3, buckets.out) == []


def test_a_mistyped_source_prefix_fails_the_listing_naming_the_prefixes_next_to_it(
    s3, buckets, catalog, emulator, task_context
):
    s3.put_object(Bucket=buckets.src, Key="incoming/cup.png", Body=sample_image(64, 48))
    s3.put_object(Bucket=buckets.src, Key="catalog-notes/readme.txt", Body=b"notes")
    conf = {**catalog, "source_prefix": "catalgo/"}

    run, states = run_backfill(conf)
    op = BetterTokenListImagesOperator(
        task_id="list_images",
        source_prefix=f"s3://{buckets.src}/catalgo/",
        dest_prefix=f"s3://{buckets.out}/catalog-edited/",
    )
    with pytest.raises(Exception) as info:
        op.execute(task_context)
    message = str(info.value)

    assert run.state == "failed"
    assert (states["list_images"], states["edit_image"]) == ("failed", "upstream_failed")
    assert emulator.stats()["posts"] == 0
    assert f"source_prefix s3://{buckets.src}/catalgo/ holds no image to edit" in message
    assert "no object has a key that starts with it" in message
    # The nearest by spelling first, from one LIST of the level above.
    nearby = message.split("prefixes next to it: ")[1].split(". ")[0].split(", ")
    assert nearby[0] == f"s3://{buckets.src}/catalog/"
    assert sorted(nearby) == sorted(
        f"s3://{buckets.src}/{p}/" for p in ("catalog", "catalog-notes", "incoming")
    )
    assert "pass allow_empty=True" in message
    left = [key for key in objects(s3, buckets.out) if "_manifests/" in key or "catalgo" in key]
    assert not left + [key for key in objects(s3, buckets.out) if key.startswith("_bettertoken/chains/")]


def test_a_prefix_with_objects_but_no_image_says_so(s3, buckets, task_context):
    s3.put_object(Bucket=buckets.src, Key="docs/readme.txt", Body=b"notes")

    op = BetterTokenListImagesOperator(
        task_id="list_images",
        source_prefix=f"s3://{buckets.src}/docs/",
        dest_prefix=f"s3://{buckets.out}/docs-edited/",
        preflight=False,
    )
    with pytest.raises(Exception, match=r"docs/ holds no image to edit: it holds objects, but none ending"):
        op.execute(task_context)


def test_allow_empty_and_all_done_are_green_runs_that_edit_nothing(
    s3, buckets, catalog, emulator, task_context
):
    allowed = BetterTokenListImagesOperator(
        task_id="list_images",
        source_prefix=f"s3://{buckets.src}/nothing-yet/",
        dest_prefix=f"s3://{buckets.out}/edited/",
        allow_empty=True,
    )
    assert allowed.execute(task_context) == []

    first, _ = run_backfill(catalog)
    again, states = run_backfill(catalog)  # every output exists: nothing to edit, and no error

    assert (first.state, again.state, states["list_images"]) == ("success", "success", "success")
    assert states["edit_image"] == "skipped"
    assert emulator.stats()["posts"] == 3


def test_a_text_file_named_png_fails_its_edit_and_the_run_after_the_manifest(s3, buckets, emulator):
    s3.put_object(Bucket=buckets.src, Key="catalog/good.jpg", Body=sample_image(64, 48, "jpg"))
    s3.put_object(Bucket=buckets.src, Key="catalog/notes.png", Body=b"these are my notes, not a picture")
    conf = {"in_bucket": buckets.src, "out_bucket": buckets.out}

    run, states = run_backfill(conf)

    assert run.state == "failed"
    assert (states["write_manifest"], emulator.stats()["posts"]) == ("failed", 1)
    manifest = run_manifests(s3, buckets.out, "catalog-edited/")[run.run_id]
    assert manifest["counts"] == {"planned": 2, "done": 1, "skipped": 0, "failed": 1}
    [failure] = manifest["failures"]
    assert failure["source"] == f"s3://{buckets.src}/catalog/notes.png"
    assert failure["dest"] == f"s3://{buckets.out}/catalog-edited/notes.png"
    assert failure["error"] == "BetterTokenInputError"
    assert "is not PNG, JPEG or WEBP" in failure["reason"]
    assert read_json(s3, buckets.out, "catalog-edited/_manifest.json")["last_failures"] == [failure]
    assert "catalog-edited/good.png" in objects(s3, buckets.out)


def test_the_preflight_operator_runs_the_same_checks_for_edits_planned_elsewhere(
    buckets, emulator, sandbox, monkeypatch, task_context, s3
):
    from airflow_bettertoken.operators.preflight import BetterTokenPreflightOperator

    def preflight(dest_prefix: str) -> BetterTokenPreflightOperator:
        return BetterTokenPreflightOperator(task_id="preflight", dest_prefix=dest_prefix)

    preflight(f"s3://{buckets.out}/edited/").execute(task_context)
    assert objects(s3, buckets.out) == []  # the probe was written and deleted again
    with pytest.raises(Exception, match="destination bucket 'missing-bucket-x' does not exist"):
        preflight("s3://missing-bucket-x/edited/").execute(task_context)
    define_default_connection(monkeypatch, sandbox, password="sk-wrong-key-0123456789")
    with pytest.raises(Exception, match=r"answered 401.*password field"):
        preflight(f"s3://{buckets.out}/edited/").execute(task_context)
    assert emulator.stats()["posts"] == 0
