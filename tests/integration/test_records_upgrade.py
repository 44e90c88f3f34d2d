"""A catalog half done by the release before the records were typed is finished by this one, paying
once for each image: the bucket of ``tests/fixtures/records/half_done_chain.json`` (see its README).

Its first run settled three of six images: item-0 failed for good, item-1 is done, item-2 was paid
for but its output could not be written, so the image waits in S3, recorded in item-2's ledger.
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

from airflow_bettertoken.protocol.spend import OutputLedger
from airflow_bettertoken.storage.run_manifest import Summary
from airflow_bettertoken.testing.samples import sample_image
from tests.integration.test_chain import DAG_ID, chain_state
from tests.integration.test_chain import run_chunk as chain_run_chunk

FIXTURE = Path(__file__).parents[1] / "fixtures" / "records" / "half_done_chain.json"
# The buckets the fixture names: the records hold their URIs.
BUCKETS = SimpleNamespace(src="records-src", out="records-out")


def restore(s3) -> None:
    """The buckets as the first run left them: the sources again, the destination from the fixture."""
    for bucket in (BUCKETS.src, BUCKETS.out):
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
            s3.create_bucket(Bucket=bucket)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=item["Key"])
    s3.put_object(Bucket=BUCKETS.src, Key="catalog//no-safe-path.png", Body=sample_image(32, 24, seed=99))
    s3.put_object(Bucket=BUCKETS.src, Key="catalog/item-0.png", Body=b"not an image at all")
    for n in range(1, 6):
        s3.put_object(Bucket=BUCKETS.src, Key=f"catalog/item-{n}.png", Body=sample_image(32, 24, seed=n))
    for found in json.loads(FIXTURE.read_text())["objects"]:
        body = json.dumps(found["json"]).encode() if "json" in found else base64.b64decode(found["base64"])
        s3.put_object(
            Bucket=BUCKETS.out,
            Key=found["key"],
            Body=body,
            ContentType=found["content_type"],
            Metadata=found["metadata"],
        )


def run_chunk(run_id: str) -> dict:
    """One run of the chain as the first one ran: three edits a run, the same prompt and size."""
    return chain_run_chunk(BUCKETS, run_id, max_edits=3, edit={"size": "1024x1024"})


def read(s3, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKETS.out, Key=key)["Body"].read())


def test_a_chain_half_done_before_the_upgrade_is_finished_paying_once_per_image(s3, emulator):
    restore(s3)
    second = run_chunk("chain__chunk2")
    third = run_chunk("chain__chunk3")

    # item-2 first (it may succeed on another try), then item-3 and item-4; then item-5.
    assert (second["planned"], third["planned"], third["remaining"]) == (3, 1, 0)
    # Three images were never paid for: three POSTs. item-2's paid image came from S3, not a new call.
    assert emulator.stats()["posts"] == 3
    outputs = s3.list_objects_v2(Bucket=BUCKETS.out, Prefix="edited/item-")["Contents"]
    assert sorted(o["Key"] for o in outputs) == [f"edited/item-{n}.png" for n in range(1, 6)]
    spilled = OutputLedger.load(read(s3, "_bettertoken/ledger/edited/item-2.png.json"), "item-2")
    [entry] = spilled.edits
    assert (entry.billed_calls, entry.stored is not None, entry.spilled_uri) == (1, True, None)
    assert not s3.list_objects_v2(Bucket=BUCKETS.out, Prefix="_bettertoken/spill/").get("Contents")

    state = chain_state(s3, BUCKETS, "chain")
    assert (state.done, state.pending, state.failed_may_retry) == (5, 0, ())
    assert list(state.failed_for_good) == ["catalog/item-0.png"]
    assert [run.run_id for run in state.runs] == ["chain", "chain__chunk2", "chain__chunk3"]
    summary = Summary.load(read(s3, "edited/_manifest.json"), "the summary")
    assert (summary.runs, summary.images_done, summary.spend.posts, summary.spend.paid) == (3, 5, 5, 5)
    assert state.dag_id == DAG_ID
