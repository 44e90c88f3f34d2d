"""Money on real servers: each call's cost in the ledger and the XCom from the connection's price table,
reports in calls and tokens without one, and a price table that does not parse fails before any POST."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.operators.manifest import BetterTokenManifestOperator
from airflow_bettertoken.operators.preflight import BetterTokenPreflightOperator
from airflow_bettertoken.protocol.spend import Outcome, OutputLedger, run_spend
from airflow_bettertoken.storage.costs import read_cost_history
from airflow_bettertoken.testing.samples import sample_image
from tests.conftest import TaskInstanceStub

PNG = sample_image(160, 120)
# The structure of OpenAI's gpt-image pricing; the figures are made up (the repository holds no prices).
TOKEN_PRICES = {"text_input": "5.00", "image_input": "10.00", "image_output": "40.00"}
PRICES = {"currency": "USD", "taken_on": "2025-06-01", "per_million_tokens": TOKEN_PRICES}
USAGE = {
    "input_tokens": 400,
    "input_tokens_details": {"text_tokens": 77, "image_tokens": 323},
    "output_tokens": 4160,
    "total_tokens": 4560,
}
# (77 x 5 + 323 x 10 + 4160 x 40) / 1,000,000
USAGE_COST = Decimal("0.170015")


def context_of(run_id: str) -> dict[str, Any]:
    ti = TaskInstanceStub(
        dag_id="money_dag", task_id="edit", run_id=run_id, map_index=-1, try_number=1, xcoms={}
    )
    return {"ti": ti}


def ledger_of(s3, bucket: str, key: str = "a.png") -> OutputLedger:
    body = s3.get_object(Bucket=bucket, Key=f"_bettertoken/ledger/{key}.json")["Body"].read()
    return OutputLedger.load(json.loads(body), key)


@pytest.fixture
def edit_op(s3, buckets):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)

    def make(conn_id: str, **kwargs) -> BetterTokenImageEditOperator:
        arguments = {
            "prompt": "p",
            "source": f"s3://{buckets.src}/a.png",
            "dest": f"s3://{buckets.out}/a.png",
            "size": "1024x1024",
            "bettertoken_conn_id": conn_id,
        }
        return BetterTokenImageEditOperator(task_id="edit", **{**arguments, **kwargs})

    return make


def test_a_paid_calls_cost_is_in_the_ledger_from_its_usage(s3, buckets, emulator, edit_op, connection):
    emulator.configure(usage=USAGE)
    edit_op(connection({"prices": PRICES})).execute(context_of("run-1"))
    [call] = ledger_of(s3, buckets.out).edits[0].calls
    assert call.outcome is Outcome.PAID
    assert (call.usage, call.cost, call.cost_estimated, call.currency) == (USAGE, USAGE_COST, False, "USD")


def test_the_emulators_default_usage_is_split_like_openais_and_priced(
    s3, buckets, emulator, edit_op, connection
):
    edit_op(connection({"prices": PRICES}), size="1536x1024").execute(context_of("run-1"))
    [call] = ledger_of(s3, buckets.out).edits[0].calls
    details = call.usage["input_tokens_details"]
    assert call.usage["input_tokens"] == details["text_tokens"] + details["image_tokens"]
    assert call.usage["output_tokens"] == 6240  # 1.5 times a 1024x1024 image's
    expected = (
        details["text_tokens"] * 5 + details["image_tokens"] * 10 + call.usage["output_tokens"] * 40
    ) / Decimal(1_000_000)
    assert call.cost == expected


def test_a_cut_call_is_estimated_from_the_per_image_price(s3, buckets, emulator, edit_op, connection):
    prices = {**PRICES, "per_image": {"1024x1024": "0.17"}}
    emulator.configure(usage=USAGE)
    emulator.queue({"action": "drop"})  # the service made (and billed) an image the client never got
    edit_op(connection({"prices": prices})).execute(context_of("run-1"))
    cut, paid = ledger_of(s3, buckets.out).edits[0].calls
    assert (cut.outcome, cut.usage, cut.cost, cut.cost_estimated) == (
        Outcome.MAYBE_BILLED,
        None,
        Decimal("0.17"),
        True,
    )
    assert (paid.cost, paid.cost_estimated) == (USAGE_COST, False)


def test_without_a_price_table_the_ledger_keeps_usage_and_no_cost(s3, buckets, emulator, edit_op, connection):
    emulator.configure(usage=USAGE)
    edit_op(connection()).execute(context_of("run-1"))
    [call] = ledger_of(s3, buckets.out).edits[0].calls
    assert (call.usage, call.cost, call.currency) == (USAGE, None, None)


def test_a_refused_call_costs_nothing(s3, buckets, emulator, edit_op, connection):
    emulator.queue({"status": 400, "json": {"error": {"message": "bad", "code": "invalid_value"}}})
    with pytest.raises(AirflowFailException):
        edit_op(connection({"prices": PRICES})).execute(context_of("run-1"))
    [call] = ledger_of(s3, buckets.out).edits[0].calls
    assert (call.outcome, call.cost) == (Outcome.NOT_BILLED, None)


BAD_TABLE = {**PRICES, "per_million_tokens": {**TOKEN_PRICES, "image_output": "forty"}}


def test_a_bad_price_table_fails_the_edit_once_before_any_post(s3, buckets, emulator, edit_op, connection):
    conn_id = connection({"prices": BAD_TABLE})
    with pytest.raises(AirflowFailException) as info:  # for good: Airflow does not retry it
        edit_op(conn_id).execute(context_of("run-1"))
    message = str(info.value)
    assert f"connection {conn_id!r}" in message
    assert '"prices.per_million_tokens.image_output"' in message
    stats = emulator.stats()
    assert (stats["posts"], stats["requests"]) == (0, [])
    assert "Contents" not in s3.list_objects_v2(Bucket=buckets.out)  # no ledger, no claim: nothing began


def test_a_bad_price_table_fails_the_preflight(buckets, emulator, connection):
    conn_id = connection({"prices": {**PRICES, "currency": "dollars"}})
    op = BetterTokenPreflightOperator(
        task_id="preflight", dest_prefix=f"s3://{buckets.out}/edited/", bettertoken_conn_id=conn_id
    )
    with pytest.raises(
        AirflowFailException, match=rf"connection {conn_id!r}, extra 'prices': \"prices.currency\""
    ):
        op.execute(context_of("run-1"))
    assert emulator.stats()["posts"] == 0


def manifest_of(buckets, conn_id: str, edits: list[dict], results: list[dict], run_id: str):
    """The run's manifest task, on the edits' XCom as a mapped run would pull it."""
    op = BetterTokenManifestOperator(
        task_id="write_manifest",
        edits=edits,
        results=results,
        manifest_uri=f"s3://{buckets.out}/edited/_manifest.json",
        bettertoken_conn_id=conn_id,
    )
    context = context_of(run_id)
    context["ti"].xcom_pull = lambda **kwargs: None
    op.execute(context)
    return op


def test_a_runs_paid_costs_estimate_a_later_cut_call_without_usage(s3, buckets, emulator, connection):
    conn_id = connection({"prices": PRICES})  # token prices only: no price of an image by size
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    emulator.configure(output_tokens={"1024x1024": 4160})
    edits = [
        {"source": f"s3://{buckets.src}/a.png", "dest": f"s3://{buckets.out}/edited/{name}.png"}
        for name in ("one", "two")
    ]
    results = [
        BetterTokenImageEditOperator(
            task_id="edit", prompt=prompt, size="1024x1024", bettertoken_conn_id=conn_id, **edit
        ).execute(context_of("run-1"))
        for edit, prompt in zip(edits, ("short", "a much longer prompt than the first"), strict=True)
    ]
    manifest_of(buckets, conn_id, edits, results, "run-1")

    run = json.loads(s3.get_object(Bucket=buckets.out, Key="edited/_manifests/run-1.json")["Body"].read())
    paid = [
        ledger_of(s3, buckets.out, f"edited/{name}.png").edits[0].calls[0].cost for name in ("one", "two")
    ]
    assert run["currency"] == "USD" and Decimal(run["spend"]["cost"]) == sum(paid)
    assert (run["spend"]["cost_estimated"], run["spend"]["calls_unpriced"]) == ("0", 0)
    history = read_cost_history(S3Hook(), buckets.out, conn_id)
    assert history.recent_cost_per_image("1024x1024") == paid
    manifest_of(buckets, conn_id, edits, results, "run-1")  # cleared and run again: counted once
    assert read_cost_history(S3Hook(), buckets.out, conn_id).recent_cost_per_image("1024x1024") == paid

    emulator.queue({"action": "drop"})
    BetterTokenImageEditOperator(
        task_id="edit",
        prompt="p",
        size="1024x1024",
        bettertoken_conn_id=conn_id,
        source=f"s3://{buckets.src}/a.png",
        dest=f"s3://{buckets.out}/edited/three.png",
    ).execute(context_of("run-2"))
    cut, _ = ledger_of(s3, buckets.out, "edited/three.png").edits[0].calls
    assert (cut.outcome, cut.cost, cut.cost_estimated) == (Outcome.MAYBE_BILLED, sum(paid) / 2, True)


def test_a_cut_call_with_no_recent_costs_and_no_image_price_is_unpriced(
    s3, buckets, emulator, edit_op, connection
):
    emulator.configure(usage=USAGE)
    emulator.queue({"action": "drop"})
    edit_op(connection({"prices": PRICES})).execute(context_of("run-1"))
    ledger = ledger_of(s3, buckets.out)
    cut, _ = ledger.edits[0].calls
    assert (cut.outcome, cut.cost, cut.currency) == (Outcome.MAYBE_BILLED, None, None)
    spend = run_spend([ledger], "money_dag", "run-1")
    assert (spend.cost, spend.calls_unpriced) == (USAGE_COST, 1)
