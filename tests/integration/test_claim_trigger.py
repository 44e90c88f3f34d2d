"""The claim trigger's polls, through the provider's store: the edit's read arguments and the 403 rule.

Against moto behind the AWS-like proxy: a requester-pays bucket (every request without
``x-amz-request-payer`` is refused with a 403) and a role without ``s3:ListBucket`` (a missing key
answers 403, not 404).
"""

from __future__ import annotations

import asyncio

from airflow.providers.amazon.aws.hooks.s3 import S3Hook

from airflow_bettertoken.protocol.spend import Holder, SpendPolicy, Verdict
from airflow_bettertoken.storage.ledger import SpendLedger
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.triggers.claim import ClaimWaitTrigger

READ_ARGS = {"RequestPayer": "requester"}
HOLDER = Holder("dag", "run", "edit", -1, 1, "worker-1")


async def first_event(trigger: ClaimWaitTrigger, timeout: float = 30) -> str:
    events = trigger.run()
    event = await asyncio.wait_for(events.__anext__(), timeout)
    await events.aclose()
    return event.payload["status"]


def claimed(output: S3Location) -> SpendLedger:
    ledger = SpendLedger(
        S3Hook(aws_conn_id="aws_faulty"),
        output,
        "edit-1",
        HOLDER,
        SpendPolicy(claim_seconds=30),
        extra_args=READ_ARGS,
    )
    assert ledger.begin().verdict is Verdict.SEND
    return ledger


def test_a_403_on_the_output_is_not_stored_and_the_claim_decides(buckets, faulty_s3):
    faulty_s3.requester_pays = faulty_s3.no_list_bucket = True
    output = S3Location(buckets.out, "a.png")
    ledger = claimed(output)
    trigger = ClaimWaitTrigger(
        output.uri, ledger.token, "aws_faulty", poll_seconds=0.05, s3_extra_args=READ_ARGS
    )

    def output_heads() -> int:
        return sum(1 for method, path in faulty_s3.requests if method == "HEAD" and path.endswith("/a.png"))

    async def wait_then_release() -> str:
        waiting = asyncio.ensure_future(first_event(trigger))
        # Several polls, each a 403 on the output while the claim is live: the trigger keeps waiting.
        # Counted, not timed: on a loaded machine a poll can take far longer than its 0.05 s interval.
        for _ in range(600):
            if output_heads() > 3 or waiting.done():
                break
            await asyncio.sleep(0.05)
        assert not waiting.done()
        await asyncio.to_thread(ledger.finish, cut=None)
        return await waiting

    try:
        assert asyncio.run(wait_then_release()) == "released"
    finally:
        ledger.finish(cut=None)
    assert output_heads() > 3


def test_the_polls_carry_the_edits_read_arguments(s3, buckets, faulty_s3):
    faulty_s3.requester_pays = True
    output = S3Location(buckets.out, "a.png")
    ledger = claimed(output)
    try:
        s3.put_object(Bucket=output.bucket, Key=output.key, Body=b"png")  # the holder's upload, done
        with_args = ClaimWaitTrigger(output.uri, ledger.token, "aws_faulty", s3_extra_args=READ_ARGS)
        assert asyncio.run(first_event(with_args)) == "stored"
        # Without them, the requester-pays bucket refuses every read: hidden, and so not "stored".
        without = ClaimWaitTrigger(output.uri, ledger.token, "aws_faulty")
        assert asyncio.run(first_event(without)) == "released"
    finally:
        ledger.finish(cut=None)


def test_the_read_arguments_survive_serialization():
    trigger = ClaimWaitTrigger("s3://b/a.png", "t", "aws_default", s3_extra_args=READ_ARGS)
    path, kwargs = trigger.serialize()
    assert path == "airflow_bettertoken.triggers.claim.ClaimWaitTrigger"
    assert ClaimWaitTrigger(**kwargs).s3_extra_args == READ_ARGS
