"""The recent costs of an image: what a run adds (once, however often its manifest task runs), what is kept,
the mean that estimates a call without usage, and which connection's costs a manifest task adds to."""

from __future__ import annotations

from decimal import Decimal

import pendulum

from airflow_bettertoken import BetterTokenImageEditOperator, BetterTokenManifestOperator, catalog_backfill
from airflow_bettertoken.protocol.spend import Call, EditEntry, Holder, Outcome, OutputLedger
from airflow_bettertoken.storage.costs import (
    RECENT_COSTS,
    CostHistory,
    cost_history_location,
    paid_costs,
)

D = Decimal


def test_the_history_is_kept_per_connection_in_the_destination_bucket():
    location = cost_history_location("out", "bt/prod one")
    assert (location.bucket, location.key) == ("out", "_bettertoken/costs/bt_prod_one.json")


def test_a_run_adds_its_costs_by_size_and_replaces_them_when_written_again():
    history = CostHistory("bt", "USD").with_run("run-1", {"1024x1024": [D("0.17"), D("0.19")]})
    history = history.with_run("run-2", {"1024x1024": [D("0.21")], "1536x1024": [D("0.25")]})
    again = history.with_run("run-2", {"1024x1024": [D("0.23")], "1536x1024": [D("0.25")]})
    assert again.recent_cost_per_image("1024x1024") == [D("0.17"), D("0.19"), D("0.23")]
    assert again.mean_cost("1024x1024") == D("0.59") / 3
    assert again.mean_cost("2048x2048") is None and again.recent_cost_per_image("auto") == []
    assert CostHistory.load(again.dump(), "history") == again


def test_only_the_last_costs_of_each_size_are_kept():
    history = CostHistory("bt", "USD")
    for run in range(RECENT_COSTS + 5):
        history = history.with_run(f"run-{run}", {"auto": [D(run)]})
    kept = history.recent_cost_per_image("auto")
    assert (len(kept), kept[0], kept[-1]) == (RECENT_COSTS, D(5), D(RECENT_COSTS + 4))


HOLDER = Holder("dag", "run-1", "edit", -1, 1, "host")


def call(number: int, outcome: Outcome, cost: str | None, *, estimated=False, size="1024x1024", by=HOLDER):
    priced = cost is not None
    return Call(
        number=number,
        by=by,
        token="t",
        sent_at=0.0,
        outcome=outcome,
        cost=D(cost) if priced else None,
        cost_estimated=estimated,
        currency="USD" if priced else None,
        size=size if priced else None,
    )


def test_a_runs_paid_costs_leave_out_estimates_other_runs_and_unpriced_calls():
    other_run = Holder("dag", "run-0", "edit", -1, 1, "host")
    calls = (
        call(1, Outcome.MAYBE_BILLED, "0.18", estimated=True),
        call(2, Outcome.PAID, "0.17"),
        call(3, Outcome.PAID, "0.30", size="2048x2048"),
        call(4, Outcome.PAID, "0.16", by=other_run),
        call(5, Outcome.PAID, None),
        call(6, Outcome.PAID, "0.20", estimated=True),  # the recent mean, for a paid call without usage
    )
    ledger = OutputLedger("s3://out/a.png", edits=(EditEntry("e" * 64, calls),))
    assert paid_costs([ledger], "dag", "run-1") == {"1024x1024": [D("0.17")], "2048x2048": [D("0.30")]}


def dag_with(**edit_arguments):
    from airflow.sdk import DAG

    with DAG(dag_id="costs", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        edits = BetterTokenImageEditOperator.partial(
            task_id="edit", prompt="p", dest="s3://out/", **edit_arguments
        ).expand(source=["s3://in/a.png"])
        manifest = BetterTokenManifestOperator(
            task_id="manifest", edits=[], results=edits.output, manifest_uri="s3://out/_manifest.json"
        )
    return dag, manifest


def test_the_manifest_adds_to_the_costs_of_its_edit_tasks_connection():
    assert dag_with(bettertoken_conn_id="bt_prices")[1]._edits_conn_id() == "bt_prices"
    assert dag_with()[1]._edits_conn_id() == "bettertoken_default"
    from airflow.sdk import DAG

    with DAG(dag_id="backfill", schedule=None, start_date=pendulum.datetime(2026, 1, 1)) as dag:
        catalog_backfill(
            source_prefix="s3://in/c/", dest_prefix="s3://out/e/", prompt="p", bettertoken_conn_id="bt_b"
        )
    assert dag.get_task("write_manifest")._edits_conn_id() == "bt_b"


def test_a_manifest_task_given_the_connection_uses_it():
    manifest = BetterTokenManifestOperator(
        task_id="m", edits=[], results=[], manifest_uri="s3://o/m.json", bettertoken_conn_id="bt_given"
    )
    assert manifest._edits_conn_id() == "bt_given"
