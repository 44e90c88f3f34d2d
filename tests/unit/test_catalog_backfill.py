"""catalog_backfill's task group: the tasks it builds, their wiring, and what it refuses at parse time.

Run end to end in tests/integration/test_catalog_backfill.py.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
import pytest

from airflow_bettertoken import (
    BetterTokenConfigError,
    BetterTokenInputError,
    BetterTokenManifestOperator,
    BetterTokenNextChunkOperator,
    catalog_backfill,
)
from airflow_bettertoken.operators._hitl import HAS_HITL
from airflow_bettertoken.plugins._edit_tasks import edit_tasks_of
from tests.airflow_versions import serialize_dag

CATALOG = {"source_prefix": "s3://in/catalog/", "dest_prefix": "s3://out/edited/", "prompt": "p"}
needs_hitl = pytest.mark.skipif(not HAS_HITL, reason="the review gate needs Airflow 3.1+")


def build(**arguments):
    """A DAG holding one catalog_backfill, and the group it returned."""
    from airflow.sdk import DAG

    with DAG(dag_id="catalog", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        group = catalog_backfill(**{**CATALOG, **arguments})
    return dag, group


def wiring(dag) -> dict[str, list[str]]:
    return {task.task_id: sorted(task.upstream_task_ids) for task in dag.tasks}


def test_with_until_done_it_builds_the_four_tasks_of_the_backfill_dag_with_their_ids():
    dag, group = build(until_done="{{ params.until_done }}", max_billed_calls=3)

    assert wiring(dag) == {
        "list_images": [],
        "edit_image": ["list_images"],
        "next_chunk": ["edit_image"],
        "write_manifest": ["edit_image", "list_images", "next_chunk"],
    }
    assert group.group_id == "backfill" and sorted(group.children) == sorted(wiring(dag))
    edit = dag.get_task("edit_image")
    assert {k: edit.partial_kwargs[k] for k in ("pool", "retries", "max_billed_calls")} == {
        "pool": "bettertoken",
        "retries": 2,
        "max_billed_calls": 3,
    }
    assert edit.partial_kwargs["retry_delay"] == timedelta(seconds=30)
    manifest = dag.get_task("write_manifest")
    assert isinstance(manifest, BetterTokenManifestOperator)
    assert (manifest.manifest_uri, manifest.next_chunk_task_id, manifest.trigger_rule) == (
        "s3://out/edited/_manifest.json",
        "next_chunk",
        "all_done",
    )
    assert dag.get_task("next_chunk").until_done == "{{ params.until_done }}"


def test_without_until_done_there_is_no_next_chunk_and_the_manifest_expects_none():
    dag, _ = build()
    assert sorted(wiring(dag)) == ["edit_image", "list_images", "write_manifest"]
    assert dag.get_task("write_manifest").next_chunk_task_id is None


def test_with_prefix_group_id_every_task_and_every_reference_to_one_is_prefixed():
    dag, _ = build(until_done=True, group_id="shoes", prefix_group_id=True)
    assert sorted(wiring(dag)) == [
        "shoes.edit_image",
        "shoes.list_images",
        "shoes.next_chunk",
        "shoes.write_manifest",
    ]
    manifest, next_chunk = dag.get_task("shoes.write_manifest"), dag.get_task("shoes.next_chunk")
    assert isinstance(next_chunk, BetterTokenNextChunkOperator)
    assert manifest.listing_task_id == next_chunk.listing_task_id == "shoes.list_images"
    assert manifest.next_chunk_task_id == "shoes.next_chunk"


def test_two_backfills_in_one_dag_need_their_own_prefixes():
    from airflow.sdk import DAG

    with DAG(dag_id="two", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        catalog_backfill(**CATALOG, group_id="shoes", prefix_group_id=True)
        hats = {**CATALOG, "dest_prefix": "s3://out/hats/"}
        catalog_backfill(**hats, group_id="hats", prefix_group_id=True)
    assert len(dag.tasks) == 6
    assert sorted(edit_tasks_of(serialize_dag(dag))) == ["hats.edit_image", "shoes.edit_image"]


def test_without_a_pool_the_edits_take_airflows_default_pool():
    dag, _ = build(pool=None)
    assert "pool" not in dag.get_task("edit_image").partial_kwargs


@needs_hitl
def test_with_review_it_stages_reviews_re_edits_and_reviews_again_before_the_next_chunk():
    dag, _ = build(review="{{ params.review }}", until_done=True, undecided="approve")

    assert wiring(dag) == {
        "staging_prefix": [],
        "list_images": ["staging_prefix"],
        "edit_image": ["list_images"],
        "review": ["edit_image", "staging_prefix"],
        "reedit_image": ["review"],
        "review_reedits": ["reedit_image", "staging_prefix"],
        "next_chunk": ["edit_image", "review_reedits"],
        "write_manifest": ["edit_image", "list_images", "next_chunk"],
    }
    first, last = dag.get_task("review"), dag.get_task("review_reedits")
    assert (first.review_round, last.review_round, first.max_rounds) == (1, 2, 2)
    assert (first.undecided, first.enabled, first.response_timeout) == (
        "approve",
        "{{ params.review }}",
        timedelta(hours=48),
    )
    assert dag.get_task("reedit_image").partial_kwargs["if_exists"] == "replace"
    assert dag.get_task("write_manifest").reviewed == "{{ params.review }}"
    # The gallery finds both edit tasks in the DAG as the DAG processor stores it.
    assert sorted(edit_tasks_of(serialize_dag(dag))) == ["edit_image", "reedit_image"]


@pytest.mark.skipif(HAS_HITL, reason="Airflow 3.1+ has human-in-the-loop tasks")
def test_with_review_on_airflow_3_0_the_dag_fails_at_parse_time_naming_3_1():
    with pytest.raises(BetterTokenConfigError, match=r"review=.*needs Airflow 3\.1 or later"):
        build(review=True)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"size": "1024x768"}, BetterTokenInputError, "size '1024x768' is not allowed"),
        ({"dest_prefix": "s3://out/edited"}, BetterTokenInputError, "dest_prefix must be an s3://"),
        ({"source_prefix": "in/catalog/"}, BetterTokenInputError, "source_prefix"),
        ({"prompt": ""}, BetterTokenInputError, "prompt"),
        ({"max_edits_per_run": 0}, BetterTokenInputError, "max_edits_per_run=0"),
        ({"max_billed_calls": 0}, BetterTokenConfigError, "catalog_backfill max_billed_calls"),
    ],
)
def test_what_is_wrong_already_fails_the_dag_at_parse_time(arguments, error, message):
    with pytest.raises(error, match=message):
        build(**arguments)


def test_templates_are_left_for_the_run_to_check():
    dag, _ = build(size="{{ params.size }}", dest_prefix="s3://{{ params.out }}/edited/{{ ds }}/")
    manifest_uri = dag.get_task("write_manifest").manifest_uri
    assert manifest_uri == "s3://{{ params.out }}/edited/{{ ds }}/_manifest.json"


@pytest.mark.parametrize(("review", "expected"), [("True", "staged"), ("False", ""), (False, "")])
def test_the_staging_prefix_is_the_review_stores_own_in_the_destinations_bucket(review, expected):
    from types import SimpleNamespace

    from airflow_bettertoken.operators.backfill import _staging_prefix
    from airflow_bettertoken.storage.review import staging_prefix

    ti = SimpleNamespace(dag_id="catalog", run_id="manual__2026-12-05T10:00:00+00:00")
    found = _staging_prefix.function("s3://out/edited/", review, ti=ti)
    assert found == (staging_prefix("out", ti.dag_id, ti.run_id) if expected else "")
    assert not expected or found.startswith("s3://out/_bettertoken/staging/catalog/")
