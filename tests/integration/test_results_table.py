"""The results table against moto: created once per run, ``latest`` replaced, JSON Lines and Parquet
read back, the previous latest table carried over; and a DAG run whose results table is an asset event."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from decimal import Decimal

import pytest
from airflow.providers.amazon.aws.hooks.s3 import S3Hook

from airflow_bettertoken.exceptions import BetterTokenOutputExistsError
from airflow_bettertoken.protocol.result import EditFailure, EditXCom
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.results_table import RunOutcomes, results_locations
from airflow_bettertoken.storage.results_writer import write_results_table
from airflow_bettertoken.storage.s3_io import S3IO
from airflow_bettertoken.storage.table_plan import PlanRow, read_plan, table_plan_location, write_plan
from airflow_bettertoken.testing.samples import sample_image

MIB = 1024 * 1024


def store(**transfer) -> S3IO:
    return S3IO(S3Hook(aws_conn_id="aws_default", transfer_config_args=transfer or None))


def read_lines(s3, bucket: str, key: str) -> list[dict]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines()]


def read_parquet(s3, bucket: str, key: str) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())).to_pylist()


@pytest.mark.parametrize("size", [1000, 6 * MIB], ids=["one-put", "multipart"])
def test_upload_file_creates_only_once_and_replaces_when_asked(s3, buckets, tmp_path, size):
    """Parts of 5 MiB, S3's smallest: a 6 MiB file goes up in two, with the condition on the last request."""
    files = [tmp_path / "first", tmp_path / "second"]
    for number, path in enumerate(files):
        path.write_bytes(bytes([number]) * size)
    where = S3Location(buckets.out, "tables/latest.jsonl")
    parts = store(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)

    first = parts.upload_file(str(files[0]), where, if_none_match=True, content_type="application/x-ndjson")
    again = parts.upload_file(str(files[1]), where, if_none_match=True)

    assert (first.written, again.written) == (True, False)
    stored = s3.get_object(Bucket=buckets.out, Key=where.key)
    assert (stored["Body"].read(), stored["ContentType"]) == (files[0].read_bytes(), "application/x-ndjson")
    assert parts.upload_file(str(files[1]), where, if_none_match=False).written
    assert s3.get_object(Bucket=buckets.out, Key=where.key)["Body"].read() == files[1].read_bytes()
    assert s3.list_multipart_uploads(Bucket=buckets.out).get("Uploads", []) == []


def test_upload_file_sends_arguments_s3transfer_refuses_in_parts_of_its_own(s3, buckets, tmp_path):
    """``BucketKeyEnabled`` is a PutObject argument that boto3's managed transfer refuses."""
    path = tmp_path / "table"
    path.write_bytes(b"x" * 6 * MIB)
    where = S3Location(buckets.out, "tables/latest.parquet")
    parts = S3IO(
        S3Hook(aws_conn_id="aws_default", transfer_config_args={"multipart_threshold": 5 * MIB}),
        {"BucketKeyEnabled": True, "ServerSideEncryption": "AES256"},
    )

    assert parts.upload_file(str(path), where, if_none_match=False).written

    stored = s3.head_object(Bucket=buckets.out, Key=where.key)
    assert (stored["ContentLength"], stored["ServerSideEncryption"]) == (6 * MIB, "AES256")
    assert s3.list_multipart_uploads(Bucket=buckets.out).get("Uploads", []) == []


def out_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/rows/{key}.png"


def plan_rows(bucket: str, states: dict[str, str]) -> list[PlanRow]:
    return [
        PlanRow(
            key,
            line,
            state,
            None if state == "bad" else out_uri(bucket, key),
            f"edit {key}",
            "1024x1024",
            (f"s3://in/{key}.jpg",),
            "no source" if state == "bad" else None,
        )
        for line, (key, state) in enumerate(states.items(), 1)
    ]


def made(bucket: str, key: str) -> dict:
    xcom = EditXCom(
        output_uri=out_uri(bucket, key),
        width=1024,
        height=1024,
        requested_size="1024x1024",
        nbytes=5,
        sha256=key * 8,
        model="gpt-image-2",
        source_uris=[f"s3://in/{key}.jpg"],
        billed_calls=1,
    )
    return xcom.dump()


def priced(run: RunOutcomes, costs: dict[str, str]) -> RunOutcomes:
    """The run with what its outputs' spend ledgers would say they cost (RunOutcomes.add_spend)."""
    run.costs, run.currency = {uri: Decimal(cost) for uri, cost in costs.items()}, "USD"
    return run


def test_a_run_table_is_written_once_and_latest_carries_earlier_rows(s3, buckets):
    prefix = S3Location(buckets.out, "rows/_results/")
    writer = store()
    first_plan = plan_rows(buckets.out, {"a": "planned", "b": "planned", "c": "bad", "d": "later"})
    location = table_plan_location(buckets.out, "rows_dag", "run-1")
    assert write_plan(writer, location, first_plan).written
    assert list(read_plan(writer, location)) == first_plan
    failure = EditFailure(reason="no such key", error="BetterTokenInputError", for_good=True)
    run_1 = RunOutcomes.from_xcom(
        [made(buckets.out, "a")], [{**failure.dump(), "dest": out_uri(buckets.out, "b")}]
    )
    priced(run_1, {out_uri(buckets.out, "a"): "0.04"})

    written = write_results_table(writer, read_plan(writer, location), run_1, prefix, "run-1")

    assert written.counts == {
        "done": 1,
        "skipped": 0,
        "failed": 0,
        "failed for good": 1,
        "blocked by budget": 0,
        "bad": 1,
        "later": 1,
    }
    first = read_lines(s3, buckets.out, "rows/_results/runs/run-1.jsonl")
    assert [(r["key"], r["state"], r["cost"], r["error"]) for r in first] == [
        ("a", "done", "0.04", None),
        ("b", "failed for good", None, "BetterTokenInputError: no such key"),
        ("c", "bad", None, "no source"),
        ("d", "later", None, None),
    ]
    assert read_parquet(s3, buckets.out, "rows/_results/runs/run-1.parquet") == first
    assert read_lines(s3, buckets.out, "rows/_results/latest.jsonl") == first

    with pytest.raises(BetterTokenOutputExistsError, match=r"runs/run-1\.jsonl exists already"):
        write_results_table(writer, iter(first_plan), RunOutcomes(), prefix, "run-1")

    # The next run of the chain: a's output exists (done), b failed for good, d is edited now.
    second_plan = plan_rows(buckets.out, {"a": "done", "b": "failed for good", "c": "bad", "d": "planned"})
    run_2 = priced(RunOutcomes.from_xcom([made(buckets.out, "d")], []), {out_uri(buckets.out, "d"): "0.05"})
    write_results_table(writer, iter(second_plan), run_2, prefix, "run-2", parquet=False)

    latest = read_lines(s3, buckets.out, "rows/_results/latest.jsonl")
    assert latest == read_lines(s3, buckets.out, "rows/_results/runs/run-2.jsonl")
    assert latest[0] == first[0]  # a: done in run 1, its figures carried over
    assert latest[1] == first[1]  # b: failed for good, its reason kept
    assert [(r["key"], r["state"], r["cost"]) for r in latest[2:]] == [
        ("c", "bad", None),
        ("d", "done", "0.05"),
    ]
    assert "Contents" not in s3.list_objects_v2(Bucket=buckets.out, Prefix="rows/_results/runs/run-2.parquet")
    # Without pyarrow's file this time, the latest Parquet table is still run 1's.
    assert read_parquet(s3, buckets.out, "rows/_results/latest.parquet") == first


LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"
# A stand-in for the row planner: it writes the plan file and returns the edits, as the planner does.
DAG_FILE = """
import pendulum
from airflow.sdk import DAG, task
from airflow.providers.amazon.aws.hooks.s3 import S3Hook

from airflow_bettertoken import BetterTokenImageEditOperator, BetterTokenResultsTableOperator
from airflow_bettertoken.storage.s3_io import S3IO
from airflow_bettertoken.storage.table_plan import PlanRow, table_plan_location, write_plan

OUT, IN = {out!r}, {src!r}

with DAG(dag_id="results_table_test", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")):

    @task
    def plan_rows(dag_run=None):
        rows = [
            PlanRow("mug", 1, "planned", f"s3://{{OUT}}/rows/mug.png", "white background", "1024x1024",
                    (f"s3://{{IN}}/mug.png",)),
            PlanRow("gone", 2, "planned", f"s3://{{OUT}}/rows/gone.png", "white background", "1024x1024",
                    (f"s3://{{IN}}/missing.png",)),
            PlanRow("old", 3, "done", f"s3://{{OUT}}/rows/old.png", "white background", "1024x1024"),
            PlanRow("", 4, "bad", None, None, None, reason="the row has no key"),
        ]
        where = table_plan_location(OUT, dag_run.dag_id, dag_run.run_id)
        write_plan(S3IO(S3Hook(aws_conn_id="aws_default")), where, rows)
        return [
            dict(source=list(r.sources), dest=r.dest, prompt=r.prompt, size=r.size, image_label=r.key)
            for r in rows
            if r.state == "planned"
        ]

    planned = plan_rows()
    edits = BetterTokenImageEditOperator.partial(task_id="edit_row").expand_kwargs(planned)
    edits >> BetterTokenResultsTableOperator(
        task_id="results_table", dest_prefix=f"s3://{{OUT}}/rows/", edits=planned, results=edits.output
    )
"""


@pytest.fixture
def bundle(tmp_path, monkeypatch, airflow_db):
    """A DAG bundle of the test's own: ``load(dag_id, text)`` writes, parses and serializes the DAG."""
    bundles = [
        {"name": "dags-folder", "classpath": LOCAL_BUNDLE, "kwargs": {}},
        {"name": "results-table-tests", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(tmp_path)}},
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))

    def load(dag_id: str, text: str):
        from tests.airflow_versions import dagbag

        (tmp_path / f"{dag_id}.py").write_text(text)
        bag = dagbag(tmp_path)
        assert dict(bag.import_errors) == {}
        # Serialized as a DAG processor would, which marks its asset active (Airflow 3.0 needs it).
        reserialize = [sys.executable, "-m", "airflow", "dags", "reserialize", "-B", "results-table-tests"]
        subprocess.run(reserialize, check=True, capture_output=True)
        return bag.dags[dag_id]

    return load


@pytest.fixture
def results_dag(bundle, buckets):
    return bundle("results_table_test", DAG_FILE.format(out=buckets.out, src=buckets.src))


def asset_events(dag_id: str, run_id: str) -> list[tuple[str, dict]]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).where(AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run_id)
        ).all()
        return [(event.asset.uri, event.extra) for event in events]


def test_a_dag_run_writes_its_results_table_and_emits_it_as_an_asset_event(
    s3, buckets, emulator, results_dag
):
    s3.put_object(Bucket=buckets.src, Key="mug.png", Body=sample_image(64, 64))
    s3.put_object(Bucket=buckets.out, Key="rows/old.png", Body=sample_image(32, 32))

    run = results_dag.test()

    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states["results_table"] == "success"  # all_done: it runs although an edit failed
    rows = read_lines(s3, buckets.out, "rows/_results/latest.jsonl")
    assert [(r["key"], r["state"]) for r in rows] == [
        ("mug", "done"),
        ("gone", "failed for good"),
        ("old", "skipped"),
        ("", "bad"),
    ]
    assert rows[0]["billed_calls"] == 1 and rows[0]["size_matches"] is not None
    assert rows[1]["billed_calls"] == 0 and rows[1]["error"].startswith("BetterTokenInputError")
    latest_uri = f"s3://{buckets.out}/rows/_results/latest.jsonl"
    [(uri, extra)] = asset_events(results_dag.dag_id, run.run_id)
    assert uri == latest_uri
    assert extra["counts"] == {
        "done": 1,
        "skipped": 1,
        "failed": 0,
        "failed for good": 1,
        "blocked by budget": 0,
        "bad": 1,
        "later": 0,
    }
    assert extra["spend"] == {"calls": 1, "billed_calls": 1, "cost": None, "currency": None}
    assert extra["latest"][0] == latest_uri and extra["rows"] == 4


ENRICHMENT_DAG = """
import pendulum
from airflow.sdk import DAG

from airflow_bettertoken import table_enrichment

ROWS = [
    {{"sku": "a", "image": "s3://{src}/a.png", "name": "mug"}},
    {{"sku": "b", "image": "s3://{src}/b.png", "name": "vase"}},
    {{"sku": "c", "name": "a row without its image"}},
    {{"sku": "d", "image": "s3://{src}/d.png", "name": "lamp"}},
]

with DAG(
    dag_id="table_enrichment_test",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    max_active_runs=1,
):
    table_enrichment(
        rows=ROWS,
        dest_prefix="s3://{out}/products/",
        key_column="sku",
        source_columns="image",
        prompt_template="Put the ${{name}} on a plain white background",
        default_size="1024x1024",
        pool=None,
    )
"""


def test_table_enrichment_runs_twice_and_the_second_table_carries_the_first_runs_rows(
    s3, buckets, emulator, bundle
):
    for seed, sku in enumerate("abd"):
        s3.put_object(Bucket=buckets.src, Key=f"{sku}.png", Body=sample_image(64, 64, "png", seed))
    s3.put_object(Bucket=buckets.out, Key="products/d.png", Body=sample_image(32, 32))
    dag = bundle("table_enrichment_test", ENRICHMENT_DAG.format(out=buckets.out, src=buckets.src))

    first = dag.test()

    assert first.state == "success"
    assert emulator.stats()["paid"] == 2
    rows = read_lines(s3, buckets.out, "products/_results/latest.jsonl")
    assert [(r["key"], r["state"]) for r in rows] == [
        ("a", "done"),
        ("b", "done"),
        ("c", "bad"),
        ("d", "skipped"),
    ]
    assert rows[0]["prompt"] == "Put the mug on a plain white background" and rows[0]["billed_calls"] == 1
    [(_, extra)] = asset_events(dag.dag_id, first.run_id)
    assert (extra["counts"]["done"], extra["counts"]["bad"], extra["spend"]["calls"]) == (2, 1, 2)

    second = dag.test()

    first_table = results_locations(S3Location(buckets.out, "products/_results/"), first.run_id, ".jsonl")[0]
    assert read_lines(s3, buckets.out, first_table.key) == rows
    again = read_lines(s3, buckets.out, "products/_results/latest.jsonl")
    assert again == rows  # nothing edited: a and b keep what the first run recorded
    assert emulator.stats()["paid"] == 2
    [(_, extra)] = asset_events(dag.dag_id, second.run_id)
    assert extra["spend"]["calls"] == 0
