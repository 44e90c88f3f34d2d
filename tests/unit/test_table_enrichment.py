"""table_enrichment's task group and the results table task: what they build and refuse at parse time.

The results table is run against moto in tests/integration/test_results_table.py.
"""

from __future__ import annotations

import pendulum
import pytest

from airflow_bettertoken import (
    BetterTokenInputError,
    BetterTokenManifestOperator,
    BetterTokenResultsTableOperator,
    table_enrichment,
)

TABLE = {
    "table_uri": "s3://in/products.csv",
    "dest_prefix": "s3://out/products/",
    "prompt_template": "${name}",
}


def in_dag(build):
    from airflow.sdk import DAG

    with DAG(dag_id="rows", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        built = build()
    return dag, built


def results_task(**arguments) -> BetterTokenResultsTableOperator:
    arguments = {"dest_prefix": "s3://out/products/", "edits": [], "results": [], **arguments}
    _, task = in_dag(lambda: BetterTokenResultsTableOperator(task_id="results", **arguments))
    return task


def test_the_results_table_runs_after_failed_edits_and_emits_its_latest_table_as_an_asset():
    task = results_task()
    assert task.trigger_rule == "all_done"
    assert [outlet.uri for outlet in task.outlets] == ["s3://out/products/_results/latest.jsonl"]
    assert [o.uri for o in results_task(results_prefix="s3://tables/rows/").outlets] == [
        "s3://tables/rows/latest.jsonl"
    ]


def test_with_a_templated_prefix_the_asset_is_the_dags_to_give():
    assert results_task(dest_prefix="s3://{{ params.out }}/products/").outlets == []
    assert results_task(results_prefix="{{ params.tables }}").outlets == []


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (
            {"dest_prefix": "s3://out/products"},
            "dest_prefix must be an s3://bucket/prefix/ URI ending in '/'",
        ),
        ({"results_prefix": "s3://out/latest.jsonl"}, "results_prefix must be an s3://bucket/prefix/ URI"),
    ],
    ids=["dest-prefix", "results-prefix"],
)
def test_a_literal_prefix_that_is_none_fails_the_dag_at_parse_time(arguments, problem):
    with pytest.raises(BetterTokenInputError, match=problem):
        results_task(**arguments)


def wiring(dag) -> dict[str, list[str]]:
    return {task.task_id: sorted(task.upstream_task_ids) for task in dag.tasks}


def test_table_enrichment_wires_the_planner_edits_next_chunk_manifest_and_results_table():
    dag, group = in_dag(lambda: table_enrichment(**TABLE, until_done=True, max_billed_calls=2))

    assert wiring(dag) == {
        "list_rows": [],
        "edit_row": ["list_rows"],
        "next_chunk": ["edit_row"],
        "write_manifest": ["edit_row", "list_rows", "next_chunk"],
        "write_results_table": ["edit_row", "list_rows", "next_chunk"],
    }
    assert group.group_id == "enrichment"
    assert dag.get_task("edit_row").partial_kwargs["max_billed_calls"] == 2
    manifest = dag.get_task("write_manifest")
    assert isinstance(manifest, BetterTokenManifestOperator)
    assert manifest.manifest_uri == "s3://out/products/_manifest.json"
    table = dag.get_task("write_results_table")
    assert [o.uri for o in table.outlets] == ["s3://out/products/_results/latest.jsonl"]
    # Both end the group: either failing fails the run (a DAG run's state is its leaves').
    assert {t.task_id for t in dag.tasks if not t.downstream_task_ids} == {
        "write_manifest",
        "write_results_table",
    }


def test_table_enrichment_refuses_a_bad_chunk_size_at_parse_time():
    with pytest.raises(BetterTokenInputError, match="max_edits_per_run=0 must be a whole number"):
        in_dag(lambda: table_enrichment(**TABLE, max_edits_per_run=0))
