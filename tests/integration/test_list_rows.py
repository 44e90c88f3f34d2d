"""The row planner against moto's S3 server and the emulator: tables in, edits out, bad rows never paid.

The operators run here one after another, as the scheduler would run a table's DAG: plan the rows,
make each planned edit, write the manifest (which settles the chain), with run ids ``table``,
``table__chunk2``, ...
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_bettertoken.exceptions import BetterTokenInputError, BetterTokenRecordError
from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.operators.list_rows import BetterTokenListRowsOperator
from airflow_bettertoken.operators.manifest import BetterTokenManifestOperator
from airflow_bettertoken.operators.results_table import BetterTokenResultsTableOperator
from airflow_bettertoken.storage.chain import ChainState
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.s3_io import S3IO
from airflow_bettertoken.storage.table_plan import read_plan, table_plan_location
from airflow_bettertoken.testing.samples import sample_image

DAG_ID = "table_dag"
TEMPLATE = "Recolour the ${product} in ${colour}"


class RunStub:
    """The XCom of one DAG run, as the task instances of its tasks push and pull it."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.xcoms: dict[tuple[str, int, str], Any] = {}

    def context(self, task_id: str, map_index: int = -1) -> dict[str, Any]:
        run = self

        class TI(SimpleNamespace):
            def xcom_push(self, key: str, value: Any) -> None:
                run.xcoms[(task_id, map_index, key)] = value

            def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
                return run.xcoms.get((task_ids, -1, key))

        ti = TI(dag_id=DAG_ID, run_id=self.run_id, task_id=task_id, map_index=map_index, try_number=1)
        return {"ti": ti, "dag_run": SimpleNamespace(start_date=datetime.now(timezone.utc))}

    def mapped(self, task_id: str, key: str) -> list[Any]:
        found = sorted((i, v) for (t, i, k), v in self.xcoms.items() if t == task_id and k == key)
        return [value for _, value in found]


class OutletEvents:
    """The task's ``outlet_events``: one event's extra for every outlet (Airflow 3.0's Asset is no key)."""

    def __init__(self) -> None:
        self.extra: dict = {}

    def __getitem__(self, outlet: Any) -> OutletEvents:
        return self


def plan(buckets, run_id: str = "table", **arguments: Any) -> tuple[list[dict], RunStub]:
    run = RunStub(run_id)
    arguments.setdefault("prompt_template", TEMPLATE)
    planner = BetterTokenListRowsOperator(
        task_id="plan_rows", dest_prefix=f"s3://{buckets.out}/edited/", preflight=False, **arguments
    )
    edits = planner.execute(run.context("plan_rows"))
    run.xcoms[("plan_rows", -1, "return_value")] = edits
    return edits, run


def run_table(buckets, run_id: str = "table", **arguments: Any) -> tuple[list[dict], RunStub]:
    """One run: plan, make each planned edit, write the manifest (which settles the chain)."""
    edits, run = plan(buckets, run_id, **arguments)
    # The planner's connection is the edits' and the manifest's too, as table_enrichment wires them.
    conn = (
        {"bettertoken_conn_id": arguments["bettertoken_conn_id"]}
        if "bettertoken_conn_id" in arguments
        else {}
    )
    for index, planned in enumerate(edits):
        op = BetterTokenImageEditOperator(task_id="edit_image", **planned, **conn)
        with contextlib.suppress(AirflowFailException):
            run.xcoms[("edit_image", index, "return_value")] = op.execute(run.context("edit_image", index))
    manifest = BetterTokenManifestOperator(
        task_id="write_manifest",
        edits=[],
        results=[],
        manifest_uri=f"s3://{buckets.out}/edited/_manifest.json",
        fail_on_failed_edits=False,
        **conn,
    )
    manifest.listing_task_id = "plan_rows"
    manifest.edits = edits
    manifest.results = run.mapped("edit_image", "return_value")
    manifest.failures = run.mapped("edit_image", "failure")
    manifest.execute(run.context("write_manifest"))
    return edits, run


def counts_of(run: RunStub) -> dict:
    return run.xcoms[("plan_rows", -1, "counts")]


def plan_file(buckets, run_id: str = "table") -> list:
    io_ = S3IO(S3Hook(aws_conn_id="aws_default"))
    return list(read_plan(io_, table_plan_location(buckets.out, DAG_ID, run_id)))


def put_jsonl(s3, bucket: str, key: str, rows: list[dict]) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body="".join(json.dumps(row) + "\n" for row in rows).encode())
    return f"s3://{bucket}/{key}"


def put_csv(s3, bucket: str, key: str, rows: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=sorted({name for row in rows for name in row}))
    writer.writeheader()
    writer.writerows(rows)
    s3.put_object(Bucket=bucket, Key=key, Body=text.getvalue().encode())
    return f"s3://{bucket}/{key}"


@pytest.fixture
def products(s3, buckets) -> list[dict]:
    """Three good rows, their sources in S3."""
    rows = []
    for n, (product, colour) in enumerate([("mug", "red"), ("lamp", "green"), ("chair", "blue")]):
        s3.put_object(Bucket=buckets.src, Key=f"products/{n}.png", Body=sample_image(32, 24, seed=n))
        rows.append({"key": f"sku-{n}", "source": f"s3://{buckets.src}/products/{n}.png", "product": product})
        rows[-1]["colour"] = colour
    return rows


def bad_rows(buckets) -> list[dict]:
    """One row of each kind that must not be paid for, and why (the start of the reason)."""
    src = f"s3://{buckets.src}/products/0.png"
    return [
        {"key": "no-colour", "source": src, "product": "mug", "why": "prompt_template uses ${colour}"},
        {"key": "huge", "source": src, "product": "m", "colour": "c", "size": "9x9", "why": "size '9x9'"},
        {"key": "bad-uri", "source": "http://x/y.png", "product": "m", "colour": "c", "why": "source 'http"},
        {"key": "sku-0", "source": src, "product": "m", "colour": "c", "why": "key 'sku-0' is also on line"},
        {"key": "../up", "source": src, "product": "m", "colour": "c", "why": "key '../up' has a '..'"},
        {"key": "", "source": src, "product": "m", "colour": "c", "why": "field 'key' (the key) is missing"},
    ]


@pytest.mark.parametrize("table_format", ["jsonl", "csv", "parquet"])
def test_a_table_plans_its_good_rows_and_reports_each_bad_one_unpaid(
    s3, buckets, emulator, products, table_format
):
    bad = bad_rows(buckets)
    rows = [*products, *[{k: v for k, v in row.items() if k != "why"} for row in bad]]
    if table_format == "jsonl":
        uri = put_jsonl(s3, buckets.src, "tables/products.jsonl", rows)
    elif table_format == "csv":
        uri = put_csv(s3, buckets.src, "tables/products.csv", rows)
    else:
        pq = pytest.importorskip("pyarrow.parquet")
        pa = pytest.importorskip("pyarrow")
        columns = sorted({name for row in rows for name in row})
        sink = io.BytesIO()
        pq.write_table(
            pa.Table.from_pylist(rows, schema=pa.schema([(c, pa.string()) for c in columns])), sink
        )
        s3.put_object(Bucket=buckets.src, Key="tables/products.parquet", Body=sink.getvalue())
        uri = f"s3://{buckets.src}/tables/products.parquet"

    edits, run = run_table(buckets, table_uri=uri, size_column="size")

    out = f"s3://{buckets.out}/edited/"
    assert edits == [
        {
            "source": row["source"],
            "dest": f"{out}{row['key']}.png",
            "prompt": f"Recolour the {row['product']} in {row['colour']}",
            "size": "auto",
            "image_label": row["key"],
        }
        for row in products
    ]
    assert emulator.stats()["posts"] == 3  # the good rows, once each; no bad row is paid for
    counts = counts_of(run)
    assert (counts["images"], counts["planned"], counts["bad"], counts["remaining"]) == (3, 3, 6, 0)
    planned = plan_file(buckets)
    assert [row.state for row in planned] == ["planned"] * 3 + ["bad"] * 6
    # CSV lines count the header; JSON Lines and Parquet rows start at 1.
    first = 2 if table_format == "csv" else 1
    assert [row.line for row in planned] == list(range(first, first + 9))
    for row, expected in zip(planned[3:], bad, strict=True):
        assert row.reason.startswith(expected["why"]), (row.reason, expected["why"])
    findings = run.xcoms[("plan_rows", -1, "findings")]
    assert findings["skipped_total"] == 6
    assert findings["skipped_keys"][4]["key"] == f"line {first + 7}: ../up"


def test_rows_from_xcom_plan_as_a_table_does(s3, buckets, emulator, products):
    edits, run = run_table(buckets, rows=[*products, "not a dict"])
    assert [edit["image_label"] for edit in edits] == ["sku-0", "sku-1", "sku-2"]
    assert emulator.stats()["posts"] == 3
    assert counts_of(run)["bad"] == 1
    assert plan_file(buckets)[-1].reason == "row 4 is a str, not a dict"


def test_the_results_table_costs_each_row_from_its_spend_ledger(s3, buckets, emulator, products, connection):
    prices = {"currency": "USD", "taken_on": "2026-11-01", "per_image": {"auto": "0.04"}}
    conn_id = connection({"prices": prices})
    edits, run = run_table(buckets, rows=products, bettertoken_conn_id=conn_id)
    table = BetterTokenResultsTableOperator(
        task_id="write_results_table", dest_prefix=f"s3://{buckets.out}/edited/", edits=[], results=[]
    )
    table.edits = edits
    table.results = run.mapped("edit_image", "return_value")
    table.failures = run.mapped("edit_image", "failure")
    context = {**run.context("write_results_table"), "outlet_events": OutletEvents()}

    extra = table.execute(context)

    body = s3.get_object(Bucket=buckets.out, Key="edited/_results/latest.jsonl")["Body"].read()
    rows = [json.loads(line) for line in body.splitlines()]
    figures = [(r["key"], r["state"], r["billed_calls"], r["cost"], r["currency"]) for r in rows]
    assert figures == [(f"sku-{n}", "done", 1, "0.04", "USD") for n in range(3)]
    assert extra["spend"] == {"calls": 3, "billed_calls": 3, "cost": "0.12", "currency": "USD"}


def test_a_rerun_plans_only_the_rows_whose_output_is_missing(s3, buckets, emulator, products):
    uri = put_jsonl(s3, buckets.src, "t.jsonl", products)
    run_table(buckets, table_uri=uri)
    s3.delete_object(Bucket=buckets.out, Key="edited/sku-1.png")

    edits, run = plan(buckets, "again", table_uri=uri)

    assert [edit["image_label"] for edit in edits] == ["sku-1"]
    assert (counts_of(run)["done"], counts_of(run)["planned"]) == (2, 1)
    assert [row.state for row in plan_file(buckets, "again")] == ["done", "planned", "done"]


def test_a_big_table_runs_in_chunks_over_a_chain_and_failed_rows_are_not_replanned(
    s3, buckets, emulator, products
):
    s3.put_object(Bucket=buckets.src, Key="products/broken.png", Body=b"not an image")
    broken = {**products[0], "key": "broken", "source": f"s3://{buckets.src}/products/broken.png"}
    uri = put_csv(s3, buckets.src, "t.csv", [broken, *products])

    first, run = run_table(buckets, "table", table_uri=uri, max_edits=2)
    assert [edit["image_label"] for edit in first] == ["broken", "sku-0"]
    assert (counts_of(run)["planned"], counts_of(run)["remaining"]) == (2, 2)
    assert [row.state for row in plan_file(buckets)] == ["planned", "planned", "later", "later"]

    second, run = run_table(buckets, "table__chunk2", table_uri=uri, max_edits=2)
    assert [edit["image_label"] for edit in second] == ["sku-1", "sku-2"]
    assert counts_of(run)["failed_for_good"] == 1 and counts_of(run)["remaining"] == 0
    states = plan_file(buckets, "table__chunk2")
    assert [row.state for row in states] == ["failed for good", "done", "planned", "planned"]
    assert "BetterTokenInputError" in states[0].reason
    assert emulator.stats()["posts"] == 3  # the broken source failed before any call
    body = s3.get_object(Bucket=buckets.out, Key=f"_bettertoken/chains/{DAG_ID}/table.json")["Body"].read()
    chain = ChainState.load(json.loads(body), "chain")
    assert list(chain.failed_for_good) == ["broken"] and chain.source_uri == uri

    third, _ = plan(buckets, "table__chunk3", table_uri=uri, replan_failed=True)
    assert [edit["image_label"] for edit in third] == ["broken"]


def test_a_changed_prompt_is_replanned_only_when_asked_and_replaces_its_output(
    s3, buckets, emulator, products
):
    run_table(buckets, table_uri=put_jsonl(s3, buckets.src, "t.jsonl", products))
    products[2]["colour"] = "purple"
    uri = put_jsonl(s3, buckets.src, "t.jsonl", products)

    assert plan(buckets, "unasked", table_uri=uri)[0] == []
    edits, _ = run_table(buckets, "asked", table_uri=uri, replan_changed_prompts="True")

    assert [(e["image_label"], e["prompt"], e.get("if_exists")) for e in edits] == [
        ("sku-2", "Recolour the chair in purple", "replace")
    ]
    assert emulator.stats()["posts"] == 4  # the changed row once more
    assert plan(buckets, "settled", table_uri=uri, replan_changed_prompts=True)[0] == []


@pytest.mark.parametrize(
    ("key", "body", "error"),
    [
        (
            "t.csv",
            b"key,source,product,colour\nsku,s3://b/k.png,\xe9t\xe9,red\n",
            "not UTF-8 text: line 2, byte",
        ),
        ("t.csv", b"", "needs a header line"),
        ("t.jsonl", b'{"id": "a", "source": "s3://b/a.png"}\n', "column 'key' is in no row"),
        ("t.tsv", b"key\n", "name its format with table_format"),
    ],
    ids=["bad-encoding", "no-header", "column-in-no-row", "unknown-suffix"],
)
def test_a_table_that_cannot_be_read_fails_once_naming_the_line_or_column(s3, buckets, key, body, error):
    s3.put_object(Bucket=buckets.src, Key=key, Body=body)
    with pytest.raises(AirflowFailException, match=error):
        plan(buckets, table_uri=f"s3://{buckets.src}/{key}")


def test_a_missing_table_fails_naming_it(buckets):
    with pytest.raises(AirflowFailException, match=r"t\.jsonl does not exist"):
        plan(buckets, table_uri=f"s3://{buckets.src}/t.jsonl")


def test_a_table_of_bad_rows_fails_unless_allow_empty(s3, buckets, emulator):
    rows = [{"key": "a", "source": "nowhere", "product": "p", "colour": "c"}]
    uri = put_jsonl(s3, buckets.src, "t.jsonl", rows)
    with pytest.raises(AirflowFailException, match="has no row to edit: 1 bad rows"):
        plan(buckets, table_uri=uri)
    assert [row.state for row in plan_file(buckets)] == ["bad"]  # the reasons are written first

    edits, run = plan(buckets, "allowed", table_uri=uri, allow_empty=True)
    assert edits == [] and counts_of(run)["bad"] == 1


def test_arguments_known_at_parse_time_are_checked_at_parse_time():
    with pytest.raises(BetterTokenInputError, match="not both"):
        BetterTokenListRowsOperator(task_id="t", dest_prefix="s3://b/p/", table_uri="s3://b/t.csv", rows=[])
    with pytest.raises(BetterTokenInputError, match="names no field"):
        BetterTokenListRowsOperator(task_id="t", dest_prefix="s3://b/p/", rows=[], prompt_template="$ off")
    # A Jinja template is rendered first, so it is checked when the task runs.
    BetterTokenListRowsOperator(
        task_id="t", dest_prefix="s3://b/p/", rows=[], prompt_template="{{ params.prompt }}"
    )


def test_a_cleared_run_writes_its_plan_again(s3, buckets, products):
    uri = put_jsonl(s3, buckets.src, "t.jsonl", products)
    plan(buckets, table_uri=uri)
    s3.put_object(Bucket=buckets.out, Key="edited/sku-0.png", Body=sample_image(8, 8))
    plan(buckets, table_uri=uri)
    assert [row.state for row in plan_file(buckets)] == ["done", "planned", "planned"]
    location = S3Location(buckets.out, f"_bettertoken/tables/{DAG_ID}/table/plan.jsonl")
    assert location == table_plan_location(buckets.out, DAG_ID, "table")


def test_reading_a_plan_file_names_what_is_wrong(s3, buckets):
    io_ = S3IO(S3Hook(aws_conn_id="aws_default"))
    location = table_plan_location(buckets.out, DAG_ID, "none")
    with pytest.raises(BetterTokenRecordError, match=r"plan file .* does not exist"):
        list(read_plan(io_, location))
    s3.put_object(Bucket=buckets.out, Key=location.key, Body=b'{"key": "a"}\n')
    with pytest.raises(BetterTokenRecordError, match=r"plan\.jsonl line 1 is not a valid PlanRow"):
        list(read_plan(io_, location))
