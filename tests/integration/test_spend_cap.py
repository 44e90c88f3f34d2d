"""The estimate and the cap over real servers (the emulator, moto's S3): a chain spends what its
``max_spend`` leaves, its edits stop when their run's reservation is used up, and it resumes once the cap
is raised without paying again for what is done.

The operators run as the scheduler would run them in a chain (``tests/integration/test_chain.py``);
the edits of one run go four at a time, as a pool of 4 sends them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException, AirflowSkipException

from airflow_bettertoken.operators import image_edit
from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator
from airflow_bettertoken.operators.list_rows import BetterTokenListRowsOperator
from airflow_bettertoken.operators.manifest import BetterTokenManifestOperator
from airflow_bettertoken.operators.next_chunk import BetterTokenNextChunkOperator
from airflow_bettertoken.protocol.budget import SpendPlan, is_blocked_by_budget
from airflow_bettertoken.protocol.result import EditFailure
from airflow_bettertoken.storage.chain import ChainState, chain_location, next_chunk_run_id
from airflow_bettertoken.storage.run_budget import RunBudget, run_tally
from airflow_bettertoken.storage.s3_io import S3IO
from airflow_bettertoken.testing.samples import sample_image

DAG_ID = "cap_dag"
#: The planner's task: the catalog's listing, or a table's row planner.
PLANNER = "plan"
PER_IMAGE = {"currency": "USD", "taken_on": "2026-11-01", "per_image": {"auto": "0.04"}}
PER_TOKEN = {
    "currency": "USD",
    "taken_on": "2026-11-01",
    "per_million_tokens": {"text_input": "5", "image_input": "10", "image_output": "40"},
}


class RunStub:
    """The XCom of one DAG run, as the task instances of its tasks push and pull it (thread-safe)."""

    def __init__(self, run_id: str, conf: dict | None = None) -> None:
        self.run_id = run_id
        self.conf = conf or {}
        self.xcoms: dict[tuple[str, int, str], Any] = {}
        self.lock = threading.Lock()

    def context(self, task_id: str, map_index: int = -1) -> dict[str, Any]:
        run = self

        class TI(SimpleNamespace):
            def xcom_push(self, key: str, value: Any) -> None:
                with run.lock:
                    run.xcoms[(task_id, map_index, key)] = value

            def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
                return run.xcoms.get((task_ids, -1, key))

        ti = TI(dag_id=DAG_ID, run_id=self.run_id, task_id=task_id, map_index=map_index, try_number=1)
        dag_run = SimpleNamespace(start_date=datetime.now(timezone.utc), conf=self.conf)
        return {"ti": ti, "dag_run": dag_run}

    def mapped(self, task_id: str, key: str) -> list[Any]:
        found = sorted((i, v) for (task, i, k), v in self.xcoms.items() if task == task_id and k == key)
        return [value for _, value in found]


def run_chunk(
    buckets,
    run_id: str,
    conn_id: str,
    *,
    max_edits: int,
    pool: int = 1,
    rows: list | None = None,
    until_done: bool = True,
    **caps: Any,
) -> RunStub:
    """One run of the chain: plan (the catalog's listing, or with ``rows`` a table's row planner),
    edit the planned images ``pool`` at a time, decide on the next chunk, write the manifest."""
    run = RunStub(run_id, conf=dict(caps))
    arguments = {"bettertoken_conn_id": conn_id, **caps}
    where = {"dest_prefix": f"s3://{buckets.out}/edited/", "max_edits": max_edits, "preflight": False}
    if rows is None:
        planner = BetterTokenListImagesOperator(
            task_id=PLANNER, source_prefix=f"s3://{buckets.src}/catalog/", **where, **arguments
        )
    else:
        planner = BetterTokenListRowsOperator(
            task_id=PLANNER, rows=rows, prompt_template="Recolour the ${product}", **where, **arguments
        )
    edits = planner.execute(run.context(PLANNER))
    run.xcoms[(PLANNER, -1, "return_value")] = edits

    def edit(index: int) -> None:
        planned = {"prompt": "p", **edits[index]}  # a table's rows carry their own prompts
        op = BetterTokenImageEditOperator(task_id="edit_image", **planned, **arguments)
        with contextlib.suppress(AirflowFailException):  # its failure record is in XCom
            value = op.execute(run.context("edit_image", index))
            with run.lock:
                run.xcoms[("edit_image", index, "return_value")] = value

    with ThreadPoolExecutor(max_workers=pool) as workers:
        list(workers.map(edit, range(len(edits))))
    next_chunk = BetterTokenNextChunkOperator(
        task_id="next_chunk", edits=[], results=[], until_done=until_done
    )
    next_chunk.listing_task_id = PLANNER
    next_chunk.results = run.mapped("edit_image", "return_value")
    next_chunk.failures = run.mapped("edit_image", "failure")
    try:
        next_chunk.execute(run.context("next_chunk"))
    except AirflowSkipException as skipped:
        run.skipped = str(skipped)
    except Exception as err:  # it would trigger the next run: there is no API server here
        run.skipped = None
        run.trigger_error = err
    manifest = BetterTokenManifestOperator(
        task_id="write_manifest",
        edits=[],
        results=[],
        manifest_uri=f"s3://{buckets.out}/edited/_manifest.json",
        fail_on_failed_edits=False,
        bettertoken_conn_id=conn_id,
    )
    manifest.listing_task_id = PLANNER
    manifest.edits = edits
    manifest.results = run.mapped("edit_image", "return_value")
    manifest.failures = run.mapped("edit_image", "failure")
    manifest.execute(run.context("write_manifest"))
    return run


def estimate_of(run: RunStub) -> SpendPlan:
    return SpendPlan.load(run.xcoms[(PLANNER, -1, "estimate")], "estimate")


def run_cost(s3, buckets, run_id: str) -> Decimal:
    body = s3.get_object(Bucket=buckets.out, Key=f"edited/_manifests/{run_id}.json")["Body"].read()
    return Decimal(json.loads(body)["spend"]["cost"])


def chain_of(s3, buckets, root: str, dag_id: str = DAG_ID) -> ChainState:
    location = chain_location(buckets.out, dag_id, root)
    body = s3.get_object(Bucket=location.bucket, Key=location.key)["Body"].read()
    return ChainState.load(json.loads(body), root)


def blocked_in(run: RunStub) -> list[EditFailure]:
    failures = [EditFailure.load(f, "failure") for f in run.mapped("edit_image", "failure")]
    return [failure for failure in failures if is_blocked_by_budget(failure)]


@pytest.fixture
def catalog(s3, buckets):
    def make(count: int) -> list[str]:
        names = [f"item-{n:02d}.png" for n in range(count)]
        for index, name in enumerate(names):
            s3.put_object(Bucket=buckets.src, Key=f"catalog/{name}", Body=sample_image(32, 24, seed=index))
        return names

    return make


def test_the_estimate_range_holds_what_a_small_catalog_cost(s3, buckets, emulator, connection, catalog):
    catalog(8)
    conn_id = connection({"prices": PER_TOKEN})
    for run_id, basis in (
        ("estimate", "price table of 2026-11-01"),
        ("estimate__chunk2", "recent mean of 4"),
    ):
        run = run_chunk(buckets, run_id, conn_id, max_edits=4)
        plan, actual = estimate_of(run), run_cost(s3, buckets, run_id)
        print(
            f"estimate ({plan.basis}) for 4 images: {plan.this_run.low} to {plan.this_run.high} "
            f"(mid {plan.this_run.mid}); actual {actual}"
        )
        assert plan.basis.startswith(basis) and plan.this_run.images == 4
        assert plan.this_run.low <= actual <= plan.this_run.high
        assert chain_of(s3, buckets, "estimate").estimate == plan  # recorded in the chain too
    assert plan.rest_of_catalog.images == 4 and emulator.stats()["posts"] == 8


def test_a_cap_reached_mid_run_stops_four_edits_at_once_and_bounds_the_overshoot(
    s3, buckets, emulator, connection, catalog, monkeypatch
):
    catalog(12)
    conn_id = connection({"prices": PER_TOKEN})
    # Each image costs far more than the estimate's high end: the run's reservation is used up mid-run.
    emulator.configure(latency=0.5, output_tokens={"auto": 12000})
    refusals: list[float] = []

    class Watched(RunBudget):
        def open_call(self) -> str:
            try:
                return super().open_call()
            except Exception:
                refusals.append(time.time())  # its LIST saw the tally past the reservation
                raise

    monkeypatch.setattr(image_edit, "RunBudget", Watched)
    run = run_chunk(buckets, "cap", conn_id, max_edits=12, pool=4, max_spend="3.25")
    plan, spent = estimate_of(run), run_cost(s3, buckets, "cap")
    posts = emulator.stats()["requests"]
    per_call = (plan.this_run.mid / plan.this_run.images).quantize(Decimal("0.000001"))
    actual_per_call = spent / len(posts)
    overshoot = spent - plan.reservation
    print(
        f"cap USD 3.25, reservation {plan.reservation} for {plan.planned} edits; {len(posts)} POSTs, "
        f"{len(blocked_in(run))} blocked; spent {spent}, past the reservation by {overshoot} "
        f"(bound: 4 calls in flight x {actual_per_call - per_call} of error each)"
    )
    assert plan.planned == 12 and plan.reservation <= Decimal("3.25")
    assert blocked_in(run) and len(posts) + len(blocked_in(run)) == 12
    assert all("blocked by budget" in failure.reason for failure in blocked_in(run))
    # The overshoot is the error of the calls in flight when the reservation ran out: at most four.
    assert overshoot <= 4 * (actual_per_call - per_call)
    # No POST started once a call had seen the tally past the reservation (calls take 0.5 s; 0.2 s is
    # the time a call admitted just before takes to reach the emulator).
    first_refusal = min(refusals)
    assert max(post["started"] for post in posts) < first_refusal + 0.2
    # The chain stops, and says how to resume.
    assert "spend cap is reached" in run.skipped and f"--run-id {next_chunk_run_id('cap')}" in run.skipped
    # The blocked edits are planned first by the next run, not given up.
    chain = chain_of(s3, buckets, "cap")
    assert len(chain.failed_may_retry) == len(blocked_in(run)) and not chain.failed_for_good
    assert chain.reservations == {}


@pytest.mark.parametrize("planner", ["catalog", "table"])
def test_a_chain_stopped_by_its_cap_resumes_when_it_is_raised_paying_nothing_again(
    s3, buckets, emulator, connection, catalog, planner
):
    names = catalog(10)
    conn_id = connection({"prices": PER_IMAGE})
    # A row per image, its key the output's name: the table plans the same edits as the catalog.
    rows = [
        {"key": name.removesuffix(".png"), "source": f"s3://{buckets.src}/catalog/{name}"} for name in names
    ]
    planned_by = {"rows": [{**row, "product": "lamp"} for row in rows]} if planner == "table" else {}
    first = run_chunk(buckets, "chain", conn_id, max_edits=4, max_spend="0.20", **planned_by)
    assert estimate_of(first).planned == 4 and not estimate_of(first).stopped_by_cap
    second = run_chunk(buckets, "chain__chunk2", conn_id, max_edits=4, max_spend="0.20", **planned_by)
    plan = estimate_of(second)
    assert plan.spent == Decimal("0.16") and plan.planned == 1 and plan.stopped_by_cap
    assert "spend cap is reached" in second.skipped and "--run-id chain__chunk3" in second.skipped
    assert emulator.stats()["posts"] == 5
    spent = run_cost(s3, buckets, "chain") + run_cost(s3, buckets, "chain__chunk2")
    print(f"stopped by its cap of USD 0.20 after spending {spent} on 5 of 10 images")
    assert spent <= Decimal("0.20")
    # The user raises the cap and triggers the next chunk's run id: the chain goes on to the end.
    run_id, runs = "chain__chunk3", 0
    while runs < 5:
        run = run_chunk(buckets, run_id, conn_id, max_edits=4, max_spend="1.00", **planned_by)
        runs += 1
        if not run.xcoms[(PLANNER, -1, "counts")]["remaining"]:
            break
        run_id = next_chunk_run_id(run_id)
    assert emulator.stats()["posts"] == 10  # each image paid once, across the stop
    assert len(s3.list_objects_v2(Bucket=buckets.out, Prefix="edited/item-")["Contents"]) == 10
    chain = chain_of(s3, buckets, "chain")
    assert chain.done == 10 and chain.max_spend == Decimal("1.00") and chain.spend.cost == Decimal("0.40")


def test_a_run_stopped_by_its_cap_says_how_to_go_on_with_until_done_off_too(
    s3, buckets, emulator, connection, catalog
):
    catalog(10)
    conn_id = connection({"prices": PER_IMAGE})
    run = run_chunk(buckets, "single", conn_id, max_edits=10, max_spend="0.20", until_done=False)
    assert estimate_of(run).planned == 5 and emulator.stats()["posts"] == 5
    # The next chunk's run id continues the chain under its cap: a new run id would start another chain.
    assert "spend cap is reached" in run.skipped and "--run-id single__chunk2" in run.skipped


def test_unreadable_budget_records_send_nothing(s3, buckets, emulator, connection, catalog, faulty_s3):
    catalog(2)
    conn_id = connection({"prices": PER_IMAGE})
    common = {"bettertoken_conn_id": conn_id, "aws_conn_id": "aws_faulty", "max_spend": "1.00"}
    edit = {"prompt": "p", "source": f"s3://{buckets.src}/catalog/item-00.png"}
    dest = f"s3://{buckets.out}/edited/item-00.png"
    run = RunStub("unreadable")
    # No reservation (no listing ran in this run): nothing is sent.
    op = BetterTokenImageEditOperator(task_id="edit_image", dest=dest, **edit, **common)
    with pytest.raises(AirflowFailException, match=r"reservation .* is missing"):
        op.execute(run.context("edit_image", 0))
    # A reservation hidden by a 403.
    lister = BetterTokenListImagesOperator(
        task_id=PLANNER,
        source_prefix=f"s3://{buckets.src}/catalog/",
        dest_prefix=f"s3://{buckets.out}/edited/",
        preflight=False,
        **common,
    )
    lister.execute(run.context(PLANNER))
    faulty_s3.deny_reads = lambda key: key.endswith("reservation.json")
    op = BetterTokenImageEditOperator(task_id="edit_image", dest=dest, **edit, **common)
    with pytest.raises(AirflowFailException, match=r"may not be read \(403\)"):
        op.execute(run.context("edit_image", 0))
    faulty_s3.deny_reads = lambda key: False
    # A reservation that does not load.
    key = f"_bettertoken/budgets/{DAG_ID}/unreadable/reservation.json"
    s3.put_object(Bucket=buckets.out, Key=key, Body=b'{"amount": "lots"}')
    op = BetterTokenImageEditOperator(task_id="edit_image", dest=dest, **edit, **common)
    with pytest.raises(AirflowFailException, match="not a valid RunReservation"):
        op.execute(run.context("edit_image", 0))
    # The chain's record hidden by a 403: the listing plans nothing.
    faulty_s3.deny_reads = lambda key: key.startswith("_bettertoken/chains/")
    with pytest.raises(AirflowFailException, match="403"):
        lister.execute(RunStub("unreadable__chunk2").context(PLANNER))
    faulty_s3.deny_reads = lambda key: False
    # A tally that holds an object the provider did not write: what the run spent is unknown.
    lister.execute(run.context(PLANNER))
    s3.put_object(Bucket=buckets.out, Key=key.replace("reservation.json", "calls/not-a-call"), Body=b"")
    op = BetterTokenImageEditOperator(task_id="edit_image", dest=dest, **edit, **common)
    with pytest.raises(AirflowFailException, match="is no call of the run's tally"):
        op.execute(run.context("edit_image", 0))
    with pytest.raises(AirflowFailException, match="is no call of the run's tally"):
        lister.execute(run.context(PLANNER))
    assert emulator.stats()["posts"] == 0


def test_without_a_cap_an_edit_makes_no_budget_request(s3, buckets, emulator, connection, catalog, faulty_s3):
    catalog(1)
    conn_id = connection({"prices": PER_IMAGE})
    op = BetterTokenImageEditOperator(
        task_id="edit_image",
        prompt="p",
        source=f"s3://{buckets.src}/catalog/item-00.png",
        dest=f"s3://{buckets.out}/edited/item-00.png",
        bettertoken_conn_id=conn_id,
        aws_conn_id="aws_faulty",
        max_spend="",
    )
    op.execute(RunStub("free").context("edit_image"))
    assert emulator.stats()["posts"] == 1
    assert not [path for _, path in faulty_s3.requests if "budgets" in path]


def test_with_a_cap_each_call_costs_a_put_and_a_list(s3, buckets, emulator, connection, catalog, faulty_s3):
    catalog(1)
    conn_id = connection({"prices": PER_IMAGE})
    common = {"bettertoken_conn_id": conn_id, "aws_conn_id": "aws_faulty", "max_spend": "1.00"}
    run = RunStub("priced")
    BetterTokenListImagesOperator(
        task_id=PLANNER,
        source_prefix=f"s3://{buckets.src}/catalog/",
        dest_prefix=f"s3://{buckets.out}/edited/",
        preflight=False,
        **common,
    ).execute(run.context(PLANNER))
    before = len(faulty_s3.requests)
    BetterTokenImageEditOperator(
        task_id="edit_image",
        prompt="p",
        source=f"s3://{buckets.src}/catalog/item-00.png",
        dest=f"s3://{buckets.out}/edited/item-00.png",
        **common,
    ).execute(run.context("edit_image"))
    budget = [request for request in faulty_s3.requests[before:] if "budgets" in request[1]]
    print(f"budget requests of one edit under a cap: {budget}")
    # The reservation's GET, the call's PUT and the tally's LIST: the cost is the estimate, so no more.
    assert len(budget) == 3
    io = S3IO(image_edit.S3Hook(aws_conn_id="aws_default"))
    assert run_tally(io, RunBudget(io, buckets.out, DAG_ID, "priced").prefix) == (Decimal("0.04"), 1)


@pytest.mark.usefixtures("airflow_db")
def test_the_example_backfill_takes_max_spend_as_a_param_and_stops_its_chain_there(
    s3, buckets, emulator, catalog, sandbox, monkeypatch
):
    from tests.airflow_versions import load_dag

    catalog(5)
    env = sandbox.connection_env()["AIRFLOW_CONN_BETTERTOKEN_DEFAULT"]
    priced = json.loads(env)
    priced["extra"] = {**priced["extra"], "prices": PER_IMAGE}
    monkeypatch.setenv("AIRFLOW_CONN_BETTERTOKEN_DEFAULT", json.dumps(priced))
    conf = {
        "in_bucket": buckets.src,
        "out_bucket": buckets.out,
        "dest_prefix": "edited/",
        "until_done": True,
        "max_spend": "USD 0.12",
    }
    run = load_dag("bettertoken_backfill").test(run_conf=conf)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success" and states["next_chunk"] == "skipped"
    assert emulator.stats()["posts"] == 3  # USD 0.12 at USD 0.04 an image
    chain = chain_of(s3, buckets, run.run_id, dag_id="bettertoken_backfill")
    assert chain.max_spend == Decimal("0.12") and chain.reservations == {}
    assert chain.estimate.stopped_by_cap and chain.spend.cost == Decimal("0.12")
