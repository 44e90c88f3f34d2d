"""The fault matrix: every fault the API, S3 or concurrency can throw, and every kind of bad input.

Each case asserts the outcome, the paid POSTs the emulator counted, and the S3 state
afterwards (no object, or exactly one valid one), and that the API key showed up nowhere.
The session ends with a summary line (see ``pytest_terminal_summary`` in conftest.py).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_bettertoken.exceptions import BetterTokenError
from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.protocol.png import verify_png
from airflow_bettertoken.protocol.spend import OutputLedger
from airflow_bettertoken.storage.ledger import RESERVED_PREFIX
from airflow_bettertoken.testing.samples import sample_image
from tests.broken_pngs import png_claiming, with_bad_crc
from tests.deferral import execute_deferrable
from tests.virtual_time import VirtualTime

PNG = sample_image(160, 120)
ERROR = {"error": {"message": "injected", "type": "server_error"}}


def answer(png: bytes | None = None, b64: str | None = None) -> dict[str, Any]:
    """A 200 answer fault carrying the given PNG bytes or base64 text."""
    text = b64 if b64 is not None else base64.b64encode(png or b"").decode()
    return {"status": 200, "json": {"created": 1, "data": [{"b64_json": text}]}}


@dataclass
class Case:
    id: str
    outcome: str  # "success", "fail" (for good, no task retry) or "retry" (a task retry may help)
    paid: int
    objects: int  # valid objects expected at dest afterwards: 0 or 1
    faults: list[dict[str, Any]] = field(default_factory=list)
    op: dict[str, Any] = field(default_factory=dict)  # operator arguments
    conn: dict[str, Any] | None = None  # a dedicated BetterToken connection: extra, password, host
    posts: int | None = None  # POSTs received, when the case says something about retries
    source: bytes | None = PNG  # what sits at the source key; None: nothing


API_CASES = [
    Case("01-429-retry-after-seconds", "success", 1, 1, [{"status": 429, "headers": {"retry-after": "1"}, "json": ERROR}], posts=2),
    Case("02-429-retry-after-ms", "success", 1, 1, [{"status": 429, "headers": {"retry-after-ms": "50"}, "json": ERROR}], posts=2),
    Case("03-429-retry-after-http-date", "success", 1, 1, [{"status": 429, "headers": {"retry-after": "DATE+1"}, "json": ERROR}], posts=2),
    Case("04-retry-after-over-the-cap", "retry", 0, 0, [{"status": 429, "headers": {"retry-after": "3600"}, "json": ERROR}], posts=1),
    Case("05-500-502-503-504-then-success", "success", 1, 1, [{"status": s, "json": ERROR} for s in (500, 502, 503, 504)], op={"api_retry": {"max_attempts": 5}, "max_billed_calls": 3}, posts=5),
    Case("06-408", "success", 1, 1, [{"status": 408, "json": ERROR}], posts=2),
    Case("07-connection-refused", "retry", 0, 0, conn={"host": "http://127.0.0.1:9/v1", "extra": {"max_attempts": 2}}, posts=0),
    Case("08-reset-before-any-answer", "success", 1, 1, [{"action": "reset"}], posts=2),
    Case("09-stall-past-the-read-timeout", "success", 2, 1, [{"action": "stall", "seconds": 3}], conn={"extra": {"timeout": 1}}, posts=2),
    Case("10-headers-then-truncated-body", "success", 2, 1, [{"action": "truncate"}], posts=2),
    Case("11-200-html-body", "fail", 1, 0, [{"status": 200, "body": "<html><body>Bad gateway</body></html>"}], posts=1),
    Case("12-200-invalid-json", "fail", 1, 0, [{"status": 200, "body": '{"data": [{"b64_json": "iVBOR'}], posts=1),
    Case("13-200-no-data", "fail", 1, 0, [{"status": 200, "json": {"created": 1}}], posts=1),
    Case("14-200-invalid-base64", "fail", 1, 0, [answer(b64="%%% not base64 %%%")], posts=1),
    Case("15-200-bytes-not-png", "fail", 1, 0, [answer(b"GIF89a" + bytes(64))], posts=1),
    Case("16a-truncated-png", "fail", 1, 0, [answer(PNG[: len(PNG) // 2])], posts=1),
    Case("16b-png-with-bad-crc", "fail", 1, 0, [answer(with_bad_crc(PNG))], posts=1),
    Case("17-png-claiming-100000x100000", "fail", 1, 0, [answer(png_claiming(100_000, 100_000))], posts=1),
    Case("18-400-content-policy", "fail", 0, 0, [{"status": 400, "json": {"error": {"message": "Your request was rejected by the safety system.", "code": "moderation_blocked"}}}], posts=1),
    Case("19-401", "fail", 0, 0, [{"status": 401, "json": {"error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}}}], posts=1),
    # Faults that cost money: the budget of 2 calls that may have been billed, then no more.
    Case("45-cut-after-reading-twice", "fail", 2, 0, [{"action": "drop"}] * 2, posts=2),
    Case("46-gateway-504-after-reading-twice", "fail", 2, 0, [{"action": "gateway_timeout"}] * 2, posts=2),
    Case("47-truncated-png", "fail", 1, 0, [{"action": "truncated_png"}], posts=1),
    Case("48-cut-once-then-success", "success", 2, 1, [{"action": "drop"}], posts=2),
    Case("49-three-cuts-with-a-budget-of-four", "success", 4, 1, [{"action": "drop"}] * 3, op={"max_billed_calls": 4}, posts=4),
    Case("50-429-and-503-cost-nothing-against-the-budget", "success", 1, 1, [{"status": 429, "json": ERROR}, {"status": 503, "json": ERROR}, {"status": 500, "json": ERROR}], posts=4),
]  # fmt: skip

BAD_INPUT_CASES = [
    Case("25-empty-prompt", "fail", 0, 0, op={"prompt": ""}),
    Case("26-whitespace-prompt", "fail", 0, 0, op={"prompt": " \n\t"}),
    Case("27-prompt-over-32000-chars", "fail", 0, 0, op={"prompt": "x" * 32_001}),
    Case("28-invalid-size", "fail", 0, 0, op={"size": "4096x4096"}),
    Case("29-no-sources", "fail", 0, 0, op={"source": []}),
    Case("30-17-sources", "fail", 0, 0, op={"source": ["SRC"] * 17}),
    Case("31-missing-bucket", "fail", 0, 0, op={"source": "s3://no-such-bucket-xyz/a.png"}),
    Case("32-missing-key", "fail", 0, 0, source=None),
    Case("33-source-not-an-image", "fail", 0, 0, source=b"%PDF-1.7 not an image"),
    Case("34-source-over-50mb", "fail", 0, 0, source=PNG + bytes(50 * 1024 * 1024)),
    Case("35-dest-key-empty", "fail", 0, 0, op={"dest": "s3://OUT/"}),
    Case("36-dest-starts-with-slash", "fail", 0, 0, op={"dest": "s3://OUT//a.png"}),
    Case("37-dest-dotdot-segment", "fail", 0, 0, op={"dest": "s3://OUT/a/../b.png"}),
    Case("38-dest-dot-segment", "fail", 0, 0, op={"dest": "s3://OUT/./b.png"}),
    Case("39-dest-control-character", "fail", 0, 0, op={"dest": "s3://OUT/a\x07.png"}),
    Case("40-dest-not-png", "fail", 0, 0, op={"dest": "s3://OUT/a.jpg"}),
    Case("40b-dest-bucket-missing", "fail", 0, 0, op={"dest": "s3://no-such-bucket-xyz/a.png"}),
    Case("41-unknown-connection-id", "fail", 0, 0, op={"bettertoken_conn_id": "no_such_connection"}),
    Case("42-connection-without-api-key", "fail", 0, 0, conn={"password": ""}),
]


def _resolve(value: Any, buckets: Any) -> Any:
    if isinstance(value, str):
        return value.replace("SRC", f"s3://{buckets.src}/a.png").replace("OUT", buckets.out)
    if isinstance(value, list):
        return [_resolve(v, buckets) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, buckets) for k, v in value.items()}
    return value


def _fault(fault: dict[str, Any]) -> dict[str, Any]:
    headers = fault.get("headers", {})
    if headers.get("retry-after", "").startswith("DATE+"):
        seconds = int(headers["retry-after"][len("DATE+") :])
        return {**fault, "headers": {"retry-after": formatdate(time.time() + seconds, usegmt=True)}}
    return fault


def run_task(op_kwargs: dict[str, Any], context: dict[str, Any]) -> tuple[str, str]:
    """Build and run the operator as a task would; the outcome class and any error text."""
    try:
        op = BetterTokenImageEditOperator(task_id="edit", **op_kwargs)
        execute_deferrable(op, context)
    except AirflowFailException as err:
        return "fail", "".join(traceback.format_exception(err))
    except BetterTokenError as err:
        return ("retry" if err.retryable else "fail"), "".join(traceback.format_exception(err))
    return "success", ""


def dest_state(s3: Any, bucket: str) -> tuple[int, int]:
    """(valid PNG objects, broken objects) in the output bucket, besides the provider's own records."""
    valid = broken = 0
    for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        if item["Key"].startswith(RESERVED_PREFIX):
            continue
        try:
            verify_png(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            valid += 1
        except BetterTokenError:
            broken += 1
    return valid, broken


def ledger_billed_calls(s3: Any, bucket: str) -> int:
    """The calls that may have been billed, as the spend ledgers in the output bucket counted them."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{RESERVED_PREFIX}ledger/").get("Contents", [])
    ledgers = [json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()) for item in listed]
    return sum(entry.billed_calls for doc in ledgers for entry in OutputLedger.load(doc, "a ledger").edits)


@pytest.fixture
def check_case(s3, buckets, emulator, api_key, capfd, fault_matrix):
    """Assert a case's facts and record it for the summary line."""

    def check(case_id, outcome, expected_outcome, paid, objects, posts=None, text=""):
        stats = emulator.stats()
        valid, broken = dest_state(s3, buckets.out)
        billed = ledger_billed_calls(s3, buckets.out)
        printed = "".join(capfd.readouterr())
        lost = max(0, objects - valid)
        problems = []
        if outcome != expected_outcome:
            problems.append(f"outcome {outcome}, expected {expected_outcome}: {text[-600:]}")
        if stats["paid"] != paid:
            problems.append(f"{stats['paid']} paid POSTs, expected {paid}")
        if posts is not None and stats["posts"] != posts:
            problems.append(f"{stats['posts']} POSTs, expected {posts}")
        if (valid, broken) != (objects, 0):
            problems.append(f"{valid} valid and {broken} broken objects, expected {objects} valid")
        if billed < stats["paid"]:
            problems.append(f"the ledger counted {billed} billed calls where {stats['paid']} were paid")
        if api_key in text or api_key in printed:
            problems.append("the API key was shown")
        fault_matrix.append(
            {
                "case": case_id,
                "passed": not problems,
                "paid": stats["paid"],
                "expected": paid,
                "bad": lost + broken,
            }
        )
        assert not problems, problems

    return check


@pytest.mark.parametrize("case", API_CASES + BAD_INPUT_CASES, ids=lambda case: case.id)
def test_fault_matrix(case, s3, buckets, emulator, connection, task_context, check_case):
    if case.source is not None:
        s3.put_object(Bucket=buckets.src, Key="a.png", Body=case.source)
    if case.faults:
        emulator.queue(*[_fault(f) for f in case.faults])
    op_kwargs = {"prompt": "studio shot", "source": "SRC", "dest": "s3://OUT/a.png", **case.op}
    if case.conn is not None:
        op_kwargs["bettertoken_conn_id"] = connection(**case.conn)

    outcome, text = run_task(_resolve(op_kwargs, buckets), task_context)

    check_case(case.id, outcome, case.outcome, case.paid, case.objects, case.posts, text)


@pytest.fixture
def virtual_time(monkeypatch) -> VirtualTime:
    """The operator's retry loops (API and S3) wait in virtual time: waits are recorded, not slept."""
    clock = VirtualTime()
    monkeypatch.setattr(BetterTokenImageEditOperator, "timing", clock.timing())
    return clock


def test_20_transient_upload_failure_is_retried(
    s3, buckets, emulator, task_context, faulty_s3, check_case, tmp_path, virtual_time
):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    faulty_s3.fail_puts = 2
    op = {"prompt": "p", "source": f"s3://{buckets.src}/a.png", "dest": f"s3://{buckets.out}/a.png"}
    outcome, text = run_task({**op, "aws_conn_id": "aws_faulty", "spill_dir": str(tmp_path)}, task_context)

    assert faulty_s3.failed_puts == 2  # retried by botocore, as the connection configures it
    assert virtual_time.waits == []  # and by nothing else on top
    assert list(tmp_path.iterdir()) == []  # nothing left behind in the spill directory
    check_case("20-transient-upload-failure", outcome, "success", 1, 1, text=text)


def test_21_permanent_upload_failure_keeps_the_paid_image_where_any_worker_finds_it(
    s3, buckets, emulator, task_context, faulty_s3, check_case, tmp_path, virtual_time
):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    faulty_s3.fail_puts = -1  # the output's key only: the ledger and the kept copy can be written
    op = {"prompt": "p", "source": f"s3://{buckets.src}/a.png", "dest": f"s3://{buckets.out}/a.png"}
    first_worker = {"spill_dir": str(tmp_path / "worker-1")}
    outcome, text = run_task({**op, **first_worker, "aws_conn_id": "aws_faulty"}, task_context)

    assert outcome == "retry"
    assert faulty_s3.failed_puts == 3  # botocore's attempts, as the connection configures them
    assert virtual_time.waits == []  # and no loop on top
    assert f"It is kept at s3://{buckets.out}/_bettertoken/spill/a.png." in text
    assert "a retry on any worker uploads it without paying again" in text
    assert not (tmp_path / "worker-1").exists()  # nothing on the worker's own disk
    # S3 heals; Airflow retries the task on another worker: the kept image is uploaded, nothing is paid.
    outcome, text = run_task({**op, "spill_dir": str(tmp_path / "worker-2")}, task_context)
    assert not s3.list_objects_v2(Bucket=buckets.out, Prefix="_bettertoken/spill/").get("Contents")
    check_case(
        "21-permanent-upload-failure-then-retry-elsewhere", outcome, "success", 1, 1, posts=1, text=text
    )


def test_21c_when_s3_refuses_the_kept_copy_too_the_image_stays_on_the_worker(
    s3, buckets, emulator, task_context, faulty_s3, check_case, tmp_path, virtual_time
):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    faulty_s3.fail_puts = -1
    faulty_s3.fails_key = lambda key: key == "a.png" or key.startswith("_bettertoken/spill/")
    op = {"prompt": "p", "source": f"s3://{buckets.src}/a.png", "dest": f"s3://{buckets.out}/a.png"}
    op["spill_dir"] = str(tmp_path)
    outcome, text = run_task({**op, "aws_conn_id": "aws_faulty"}, task_context)

    assert outcome == "retry"
    [spilled] = tmp_path.glob("*.png")
    assert str(spilled) in text and "a rerun on this worker uploads it without paying again" in text
    assert verify_png(spilled.read_bytes())
    # S3 heals; Airflow retries the task on the same worker: the spilled image is uploaded, nothing is paid.
    outcome, text = run_task(op, task_context)
    assert list(tmp_path.glob("*.png")) == []
    check_case("21c-upload-and-kept-copy-refused-then-rerun", outcome, "success", 1, 1, posts=1, text=text)


def test_21b_access_denied_on_upload_keeps_the_image_at_once(
    s3, buckets, emulator, task_context, faulty_s3, check_case, tmp_path
):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    faulty_s3.fail_puts, faulty_s3.fail_with_access_denied = -1, True
    op = {
        "prompt": "p",
        "source": f"s3://{buckets.src}/a.png",
        "dest": f"s3://{buckets.out}/a.png",
        "spill_dir": str(tmp_path),
    }
    outcome, text = run_task({**op, "aws_conn_id": "aws_faulty"}, task_context)

    assert faulty_s3.failed_puts == 1  # a 403 is not retried, by botocore or anyone
    assert "AccessDenied" in text
    assert f"kept at s3://{buckets.out}/_bettertoken/spill/a.png." in text
    check_case("21b-access-denied-on-upload", outcome, "retry", 1, 0, posts=1, text=text)


def test_22_two_tasks_writing_the_same_dest_at_once(s3, buckets, emulator, task_context, check_case):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    # Both must pass the existence check before either writes: 2 s covers any skew in their starts.
    emulator.configure(latency=2)
    op = {"prompt": "p", "source": f"s3://{buckets.src}/a.png", "dest": f"s3://{buckets.out}/a.png"}
    results: list[dict[str, Any]] = []
    waited: list[Any] = []

    def run() -> None:
        operator = BetterTokenImageEditOperator(task_id="edit", **op)
        results.append(execute_deferrable(operator, task_context, waited))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 2
    # The second waited in the trigger for the first's claim, then reported the first's image: one POST.
    assert len(waited) == 1
    assert sorted(r["skipped"] for r in results) == [False, True]
    assert results[0]["sha256"] == results[1]["sha256"]
    check_case("22-two-tasks-same-dest", "success", "success", 1, 1, posts=1)


def test_23_airflow_retry_after_a_success_does_not_pay_again(s3, buckets, emulator, task_context, check_case):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    op = {"prompt": "p", "source": f"s3://{buckets.src}/a.png", "dest": f"s3://{buckets.out}/a.png"}
    run_task(op, task_context)
    task_context["ti"].try_number = 2
    outcome, text = run_task(op, task_context)
    check_case("23-task-retry-after-success", outcome, "success", 1, 1, posts=1, text=text)


KILLED_TASK = textwrap.dedent(
    """
    import sys
    from types import SimpleNamespace
    from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
    ti = SimpleNamespace(dag_id="test_dag", task_id="edit", run_id="manual__test", map_index=-1, try_number=1)
    BetterTokenImageEditOperator(task_id="edit", prompt="p", source=sys.argv[1], dest=sys.argv[2]).execute({"ti": ti})
    """
)


def test_24_task_killed_mid_request_then_retried(s3, buckets, emulator, task_context, check_case):
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    source, dest = f"s3://{buckets.src}/a.png", f"s3://{buckets.out}/a.png"
    emulator.configure(latency=3)
    child = subprocess.Popen([sys.executable, "-c", KILLED_TASK, source, dest], env=os.environ.copy())
    deadline = time.monotonic() + 60
    while not emulator.stats()["open"]:
        assert child.poll() is None and time.monotonic() < deadline, "the task never reached the API"
        time.sleep(0.05)
    child.kill()  # SIGKILL: no cleanup, like a worker that dies
    child.wait()
    killed_at = time.monotonic()
    emulator.configure(latency=0)

    outcome, text = run_task({"prompt": "p", "source": source, "dest": dest}, task_context)

    # The retry waited for the dead task's claim to lapse (claim_seconds=6 in the tests) before paying.
    [first, retry] = emulator.stats()["requests"]
    assert first["idempotency_key"] == retry["idempotency_key"], "the retry must send the same key"
    assert time.monotonic() - killed_at >= 3
    [ledger] = [
        OutputLedger.load(
            json.loads(
                s3.get_object(Bucket=buckets.out, Key="_bettertoken/ledger/a.png.json")["Body"].read()
            ),
            "a.png's ledger",
        )
    ]
    [entry] = ledger.edits
    assert [a.outcome.value for a in entry.calls] == ["maybe billed", "paid"]
    assert "stopped renewing its claim" in entry.calls[0].cause
    # The killed request was generated (and billed) anyway: one extra POST at most.
    check_case("24-task-killed-mid-request", outcome, "success", 2, 1, posts=2, text=text)
