"""A chain of backfill runs over real S3: each run lists only after what earlier runs settled.

The operators run here one after another as the scheduler would run them in a chain, with the run
ids ``chain``, ``chain__chunk2``, ...; the cluster test runs the same chain with a real scheduler.
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator
from airflow_bettertoken.operators.manifest import BetterTokenManifestOperator
from airflow_bettertoken.storage.chain import ChainState, next_chunk_run_id
from airflow_bettertoken.testing.samples import sample_image

DAG_ID = "chain_dag"


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
        started = SimpleNamespace(start_date=datetime.now(timezone.utc))
        return {"ti": ti, "dag_run": started}

    def mapped(self, task_id: str, key: str) -> list[Any]:
        found = sorted(
            (index, value) for (task, index, k), value in self.xcoms.items() if task == task_id and k == key
        )
        return [value for _, value in found]


def run_chunk(
    buckets,
    run_id: str,
    *,
    max_edits: int,
    aws_conn_id: str = "aws_default",
    edit: dict | None = None,
    **listing,
) -> dict:
    """One run of the chain: list, edit each planned image, write the manifest. Its counts and POSTs.

    :param edit: more arguments of the edit operator (``size``, ...).
    """
    run = RunStub(run_id)
    lister = BetterTokenListImagesOperator(
        task_id="list_images",
        source_prefix=f"s3://{buckets.src}/catalog/",
        dest_prefix=f"s3://{buckets.out}/edited/",
        max_edits=max_edits,
        preflight=False,
        aws_conn_id=aws_conn_id,
        **listing,
    )
    edits = lister.execute(run.context("list_images"))
    run.xcoms[("list_images", -1, "return_value")] = edits
    for index, planned in enumerate(edits):
        op = BetterTokenImageEditOperator(task_id="edit_image", prompt="p", **planned, **(edit or {}))
        # A failed edit leaves its failure record in XCom, as in a real run.
        with contextlib.suppress(AirflowFailException):
            run.xcoms[("edit_image", index, "return_value")] = op.execute(run.context("edit_image", index))
    manifest = BetterTokenManifestOperator(
        task_id="write_manifest",
        edits=[],
        results=[],
        manifest_uri=f"s3://{buckets.out}/edited/_manifest.json",
        fail_on_failed_edits=False,
    )
    manifest.listing_task_id = "list_images"
    manifest.edits = edits
    manifest.results = run.mapped("edit_image", "return_value")
    manifest.failures = run.mapped("edit_image", "failure")
    manifest.execute(run.context("write_manifest"))
    return run.xcoms[("list_images", -1, "counts")]


def chain_state(s3, buckets, root: str) -> ChainState:
    body = s3.get_object(Bucket=buckets.out, Key=f"_bettertoken/chains/{DAG_ID}/{root}.json")["Body"].read()
    return ChainState.load(json.loads(body), root)


@pytest.fixture
def catalog(s3, buckets):
    """Seven images in key order, the first three of them text files named .png: they fail for good."""
    names = [f"item-{n}.png" for n in range(7)]
    for index, name in enumerate(names):
        body = b"not an image at all" if index < 3 else sample_image(32, 24, seed=index)
        s3.put_object(Bucket=buckets.src, Key=f"catalog/{name}", Body=body)
    return names


def test_a_chain_whose_first_images_fail_edits_every_good_image_and_ends(s3, buckets, emulator, catalog):
    run_id, runs = "chain", []
    while True:
        counts = run_chunk(buckets, run_id, max_edits=2)
        runs.append((run_id, counts))
        if not counts["remaining"] or len(runs) > 6:
            break
        run_id = next_chunk_run_id(run_id)

    # Chunks of 2: the three bad images take the first run and a half, then the four good ones.
    assert [counts["planned"] for _, counts in runs] == [2, 2, 2, 1]
    assert runs[-1][1]["remaining"] == 0 and runs[-1][1]["failed_for_good"] == 3
    assert emulator.stats()["posts"] == 4  # every good image once, no bad one
    outputs = s3.list_objects_v2(Bucket=buckets.out, Prefix="edited/item-")["Contents"]
    assert sorted(o["Key"] for o in outputs) == [f"edited/item-{n}.png" for n in range(3, 7)]
    state = chain_state(s3, buckets, "chain")
    assert sorted(state.failed_for_good) == [f"catalog/item-{n}.png" for n in range(3)]
    assert all(failure.error == "BetterTokenInputError" for failure in state.failed_for_good.values())
    assert (state.done, state.pending, state.failed_may_retry) == (4, 0, ())


def test_a_cleared_run_plans_its_own_window_again_without_duplicates(s3, buckets, emulator, catalog):
    run_chunk(buckets, "chain", max_edits=2)
    run_chunk(buckets, "chain__chunk2", max_edits=2)
    posts = emulator.stats()["posts"]
    # Cleared and run again: its window is planned again; its edit that worked is found done.
    again = run_chunk(buckets, "chain__chunk2", max_edits=2)
    assert again["planned"] == 0 and emulator.stats()["posts"] == posts
    third = run_chunk(buckets, "chain__chunk3", max_edits=2)
    assert third["planned"] == 2
    state = chain_state(s3, buckets, "chain")
    assert [run.run_id for run in state.runs] == ["chain", "chain__chunk2", "chain__chunk3"]
    assert [w.run_id for w in state.windows] == ["chain", "chain__chunk2", "chain__chunk3"]


def test_retry_failed_plans_the_failed_edits_again(s3, buckets, emulator, catalog):
    counts = run_chunk(buckets, "chain", max_edits=10)
    assert (counts["planned"], emulator.stats()["posts"]) == (7, 4)
    for index in range(3):  # the bad images are fixed
        s3.put_object(
            Bucket=buckets.src, Key=f"catalog/item-{index}.png", Body=sample_image(32, 24, seed=index)
        )
    nothing = run_chunk(buckets, "chain__chunk2", max_edits=10)
    assert (nothing["planned"], nothing["failed_for_good"]) == (0, 3)
    forced = run_chunk(buckets, "chain__chunk3", max_edits=10, replan_failed=True)
    assert forced["planned"] == 3 and emulator.stats()["posts"] == 7
    assert chain_state(s3, buckets, "chain").failed_for_good == {}


def test_later_runs_list_only_after_the_watermark(s3, buckets, emulator, faulty_s3):
    for n in range(30):
        s3.put_object(Bucket=buckets.src, Key=f"catalog/item-{n:02}.png", Body=sample_image(16, 16, seed=n))
    run_chunk(buckets, "chain", max_edits=10, aws_conn_id="aws_faulty")

    def lists_of(run_id: str) -> list[str]:
        faulty_s3.requests.clear()
        run_chunk(buckets, run_id, max_edits=10, aws_conn_id="aws_faulty")
        return [path for method, path in faulty_s3.requests if method == "GET" and "list-type=2" in path]

    second = lists_of("chain__chunk2")
    # One LIST of sources after the watermark, one of outputs across the planned keys.
    assert len(second) == 2, second
    assert all("start-after=" in path for path in second)
    assert "start-after=catalog%2Fitem-09.png" in second[0]
