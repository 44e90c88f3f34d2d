"""The spend ledger on real servers: calls written down before they are sent, across tries, runs and tasks."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_bettertoken.exceptions import (
    BetterTokenClaimLostError,
    BetterTokenRecordConflictError,
    fail_task_on_permanent_error,
)
from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.protocol.spend import Holder, Outcome, OutputLedger, SpendPolicy, Verdict
from airflow_bettertoken.storage.ledger import SpendLedger
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.records import ConditionalRecord
from airflow_bettertoken.testing.samples import sample_image
from tests.conftest import TaskInstanceStub
from tests.deferral import execute_deferrable
from tests.virtual_time import VirtualTime

PNG = sample_image(160, 120)


def context_of(run_id: str, try_number: int = 1) -> dict[str, Any]:
    ti = TaskInstanceStub(
        dag_id="spend_dag", task_id="edit", run_id=run_id, map_index=-1, try_number=try_number, xcoms={}
    )
    return {"ti": ti}


def ledger_of(s3, bucket: str, key: str = "a.png") -> OutputLedger:
    body = s3.get_object(Bucket=bucket, Key=f"_bettertoken/ledger/{key}.json")["Body"].read()
    return OutputLedger.load(json.loads(body), key)


@pytest.fixture
def edit_op(s3, buckets):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)

    def make(**kwargs) -> BetterTokenImageEditOperator:
        arguments = {
            "prompt": "p",
            "source": f"s3://{buckets.src}/a.png",
            "dest": f"s3://{buckets.out}/a.png",
        }
        return BetterTokenImageEditOperator(task_id="edit", **{**arguments, **kwargs})

    return make


def test_the_same_broken_answer_over_three_runs_is_paid_twice_and_kept(s3, buckets, emulator, edit_op):
    failures = []
    for run in (1, 2, 3):
        emulator.queue({"action": "truncated_png"})  # what every call would get
        context = context_of(f"run-{run}")
        with pytest.raises(AirflowFailException) as info:
            edit_op().execute(context)
        failures.append((str(info.value), context["ti"].xcoms["failure"]))
    assert emulator.stats()["posts"] == 2
    # The third run sends nothing, and says why: both calls paid, both answers kept as evidence.
    third_message, third_record = failures[2]
    assert third_message.startswith("not sent: each of 2 answers was paid but unusable (kept at s3://")
    assert "This image has had 2 calls that may have been billed" in third_message
    assert "report the request ids to BetterToken's support" in third_message
    assert "raise max_billed_calls (now 2)" in third_message
    assert third_record["error"] == "BetterTokenBudgetError"
    entry = ledger_of(s3, buckets.out).edits[0]
    assert [(a.outcome, a.by.run_id) for a in entry.calls] == [
        (Outcome.PAID, "run-1"),
        (Outcome.PAID, "run-2"),
    ]
    assert [r.by.run_id for r in entry.refusals] == ["run-3"]
    # Each paid answer is in S3 with its request id, and the run's failure record points at it.
    for (_, record), attempt in zip(failures[:2], entry.calls, strict=True):
        assert record["evidence_uri"] == attempt.evidence_uri
        key = attempt.evidence_uri.removeprefix(f"s3://{buckets.out}/")
        kept = s3.get_object(Bucket=buckets.out, Key=key)
        assert attempt.request_id and kept["Metadata"]["request-id"] == attempt.request_id
        assert kept["Body"].read().startswith(b"\x89PNG")  # the half image that came back


def test_a_task_retry_behind_a_proxy_that_cuts_sends_nothing_more(s3, buckets, emulator, edit_op):
    emulator.queue(*[{"action": "gateway_timeout"}] * 4)
    with pytest.raises(AirflowFailException, match="This image has had 2 calls that may have been billed"):
        edit_op().execute(context_of("run-1", try_number=1))
    # The failure is for good, but even a task retry (or a rerun) pays nothing more.
    with pytest.raises(AirflowFailException, match="This image has had 2 calls that may have been billed"):
        edit_op().execute(context_of("run-1", try_number=2))
    assert (emulator.stats()["posts"], emulator.stats()["paid"]) == (2, 2)
    [entry] = ledger_of(s3, buckets.out).edits
    assert [(a.outcome, a.status) for a in entry.calls] == [(Outcome.MAYBE_BILLED, 504)] * 2


def test_the_xcom_reports_the_ledgers_spend(s3, buckets, emulator, edit_op):
    emulator.queue({"action": "drop"})
    xcom = edit_op().execute(context_of("run-1"))
    assert (xcom["calls"], xcom["billed_calls"], xcom["skipped"]) == (2, 2, False)
    assert xcom["ledger_uri"] == f"s3://{buckets.out}/_bettertoken/ledger/a.png.json"
    ledger = ledger_of(s3, buckets.out)
    [entry] = ledger.edits
    assert ledger.claim is None  # released once stored
    assert (entry.stored.sha256, entry.image_call) == (xcom["sha256"], 2)
    assert [a.outcome for a in entry.calls] == [Outcome.MAYBE_BILLED, Outcome.PAID]
    assert all(a.elapsed_s is not None and a.ended_at >= a.sent_at for a in entry.calls)
    assert entry.calls[1].request_id.startswith("req_")


def test_a_lost_answer_to_our_own_upload_is_done_not_skipped(s3, buckets, emulator, edit_op, faulty_s3):
    faulty_s3.lose_put_answers = 1  # the PNG is stored, the answer lost; the retry meets a 412
    xcom = edit_op(aws_conn_id="aws_faulty").execute(context_of("run-1"))
    assert (xcom["skipped"], xcom["calls"], emulator.stats()["paid"]) == (False, 1, 1)
    assert ledger_of(s3, buckets.out).edits[0].stored.sha256 == xcom["sha256"]


def test_a_holder_with_a_long_call_keeps_its_claim_and_the_duplicate_waits(s3, buckets, emulator, edit_op):
    # The call takes longer than a claim lasts (claim_seconds=6 in the tests): only renewal keeps it.
    emulator.configure(latency=9)
    results: list[dict[str, Any]] = []
    waited: list[Any] = []
    first = threading.Thread(target=lambda: results.append(edit_op().execute(context_of("run-a"))))
    first.start()
    deadline = time.monotonic() + 30
    while not emulator.stats()["open"]:
        assert time.monotonic() < deadline, "the first task never reached the API"
        time.sleep(0.05)
    results.append(execute_deferrable(edit_op(), context_of("run-b"), waited))
    first.join()

    assert emulator.stats()["posts"] == 1
    assert len(waited) == 1
    assert sorted(r["skipped"] for r in results) == [False, True]


def _holder(task_id: str) -> Holder:
    return Holder(dag_id="spend_dag", run_id="run", task_id=task_id, map_index=-1, try_number=1, hostname="w")


def test_a_claim_taken_over_is_lost_and_its_holder_sends_nothing_more(buckets):
    s3_hook = S3Hook(aws_conn_id="aws_default")
    output = S3Location(buckets.out, "lost.png")
    policy = SpendPolicy(claim_seconds=0.3)  # renewed every 0.1 s
    mine = SpendLedger(s3_hook, output, "edit", _holder("mine"), policy)
    assert mine.begin().verdict is Verdict.SEND
    # Another task took the output over, as when this worker stalled past its claim: to its clock,
    # ten seconds later, that claim has lapsed.
    theirs = SpendLedger(s3_hook, output, "edit", _holder("theirs"), policy, clock=lambda: time.time() + 10)
    try:
        assert theirs.begin().verdict is Verdict.SEND
        time.sleep(0.5)  # mine's renewer finds the claim gone
        with pytest.raises(BetterTokenClaimLostError, match="lapsed and another task took the output over"):
            mine.before_send()
    finally:
        mine.finish(cut=None)
        theirs.finish(cut=None)
    assert not BetterTokenClaimLostError("").retryable
    assert theirs.entry.calls == ()  # no call was written down, so none was sent


def test_a_record_that_keeps_changing_is_a_retryable_error_not_a_failure_for_good(buckets):
    location = S3Location(buckets.out, "_bettertoken/ledger/busy.png.json")
    record = ConditionalRecord(S3Hook(aws_conn_id="aws_default"), location, timing=VirtualTime().timing())
    other = ConditionalRecord(S3Hook(aws_conn_id="aws_default"), location)

    def change(document):
        other.update(lambda current: {"n": (current or {"n": 0})["n"] + 1})  # another writer comes first
        return {"mine": True}

    with pytest.raises(BetterTokenRecordConflictError, match="kept changing"), fail_task_on_permanent_error():
        record.update(change)
    assert other.read()["n"] == 50  # one lost round each
