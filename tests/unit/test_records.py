"""The records that cross layers: the edit task's XCom and its failure record, written and read back."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from airflow_bettertoken.exceptions import BetterTokenInputError, BetterTokenRecordError
from airflow_bettertoken.protocol.result import (
    EditFailure,
    EditResult,
    EditXCom,
    made_by_metadata,
    names_sources,
    was_made_by,
)

XCOM = EditXCom(
    output_uri="s3://out/edited/mug.png",
    width=1000,
    height=1000,
    requested_size="1024x1024",
    nbytes=1234,
    sha256="ab" * 32,
    model="gpt-image-2",
    source_uris=["s3://in/mug.jpg"],
    attempts=2,
    billed_calls=2,
)
RESULT = EditResult(
    png=b"\x89PNG...",
    width=1000,
    height=1000,
    requested_size="1024x1024",
    revised_prompt=None,
    usage=None,
    request_id="req-1",
    attempts=1,
    elapsed_s=2.0,
)


def test_the_xcom_record_round_trips_through_json():
    value = json.loads(json.dumps(XCOM.dump()))
    assert (value["bucket"], value["key"], value["bytes"], value["size_matches"]) == (
        "out",
        "edited/mug.png",
        1234,
        False,
    )
    assert EditXCom.load(value, "XCom") == XCOM


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("s3://out/x.png", "it holds str, not a JSON object"),
        ([], "it holds list, not a JSON object"),
        ({}, "output_uri: Field required"),
        ({"output_uri": 7}, "output_uri: Input should be a valid string (got 7)"),
        ({"output_uri": "s3://out/x.png"}, "width: Field required"),
    ],
    ids=["a-string", "a-list", "empty", "uri-not-text", "required-fields-missing"],
)
def test_what_is_not_an_edit_record_is_an_error_naming_the_xcom_and_the_problem(value, problem):
    with pytest.raises(BetterTokenRecordError, match="XCom 'return_value' of task 'edit'") as info:
        EditXCom.load(value, "XCom 'return_value' of task 'edit'")
    assert problem in str(info.value)


def test_a_reader_ignores_keys_it_does_not_know():
    assert EditXCom.load({**XCOM.dump(), "added_later": 1}, "XCom") == XCOM


def test_a_record_of_a_later_format_asks_for_an_upgrade():
    with pytest.raises(BetterTokenRecordError, match=r"written by a later release .* upgrade it"):
        EditXCom.load({**XCOM.dump(), "format": EditXCom.FORMAT + 1}, "XCom")


def test_the_failure_record_keeps_the_first_line_of_the_error_cut_short():
    failure = EditFailure.from_error(
        "s3://in/a.png", "s3://out/", BetterTokenInputError("x" * 600 + "\nmore")
    )
    assert (failure.error, len(failure.reason), failure.for_good) == ("BetterTokenInputError", 503, True)
    assert EditFailure.load(json.loads(json.dumps(failure.dump())), "XCom") == failure
    with pytest.raises(BetterTokenRecordError, match="reason: Field required"):
        EditFailure.load({"source": "s3://in/a.png"}, "XCom")
    assert dataclasses.replace(failure, evidence_uri="s3://out/_bettertoken/evidence/a").evidence_uri


@pytest.mark.parametrize(
    "forged",
    [
        {"elapsed_s": "a while"},
        {"source_uris": 7},
        {"source_uris": ["s3://in/a.png", 7]},
        {"width": True},
        {"width": "1000"},
        {"usage": ["not", "a", "dict"]},
        {"aws_conn_id": {"conn": "x"}},
    ],
    ids=[
        "seconds-as-text",
        "sources-a-number",
        "a-source-a-number",
        "width-a-bool",
        "width-as-text",
        "usage-a-list",
        "conn-a-dict",
    ],
)
def test_a_value_of_another_type_is_no_record(forged):
    """XCom can be written through the REST API: a field of the wrong type must not reach a reader."""
    [field] = forged
    with pytest.raises(BetterTokenRecordError, match=f"is not a valid EditXCom record: {field}"):
        EditXCom.load({**XCOM.dump(), **forged}, "XCom")


def test_a_failure_record_of_another_type_is_no_record():
    failure = EditFailure.from_error("s3://in/a.png", "s3://out/", ValueError("no"))
    assert not failure.for_good  # another error than ours might heal
    with pytest.raises(BetterTokenRecordError, match="reason: Input should be a valid string"):
        EditFailure.load({**failure.dump(), "reason": ["not", "text"]}, "XCom")


def test_the_spill_record_brings_the_result_back_whole():
    record = json.loads(json.dumps(RESULT.to_spill_record()))
    assert EditResult.from_spill_record(RESULT.png, record) == RESULT
    with pytest.raises(
        BetterTokenRecordError,
        match=r"s3://out/ledger.json is not a valid SpilledResult record: width: Field required",
    ):
        EditResult.from_spill_record(RESULT.png, {"height": 1}, "s3://out/ledger.json")


TI = SimpleNamespace(
    dag_id="catalog", run_id="manual__2026-11-20T00:00:00+00:00", task_id="edit", map_index=3
)


def test_the_output_names_the_task_instance_that_wrote_it():
    metadata = RESULT.s3_metadata("prompt", ["s3://in/mug.jpg"], made_by=TI)
    assert {k: metadata[k] for k in ("dag-id", "run-id", "task-id", "map-index")} == {
        "dag-id": "catalog",
        "run-id": "manual__2026-11-20T00:00:00+00:00",
        "task-id": "edit",
        "map-index": "3",
    }
    assert was_made_by(metadata, TI) and names_sources(metadata, ["s3://in/mug.jpg"])
    for other in ({"map_index": 4}, {"run_id": "manual__other"}, {"dag_id": "another"}, {"task_id": "x"}):
        assert not was_made_by(metadata, SimpleNamespace(**{**vars(TI), **other}))
    assert not names_sources(metadata, ["s3://in/other.jpg"])


@pytest.mark.parametrize(
    "ids",
    [{"run_id": "r" * 250, "dag_id": "d" * 250, "task_id": "t" * 250}, {"run_id": "manual__café"}],
    ids=["long-ids", "not-ascii"],
)
def test_long_or_non_ascii_ids_are_recorded_as_a_digest_within_s3s_2_kb(ids):
    ti = SimpleNamespace(**{**vars(TI), **ids})
    sources = [f"s3://in/{'x' * 1000}.png"]  # the longest list still recorded in full
    metadata = RESULT.s3_metadata("prompt", sources, made_by=ti)
    assert "made-by-sha256" in made_by_metadata(ti) and "run-id" not in metadata
    assert was_made_by(metadata, ti) and not was_made_by(metadata, TI)
    assert sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items()) <= 2048
    assert all(v.isascii() for v in metadata.values())


def test_the_longest_readable_ids_fit_in_s3s_2_kb():
    ti = SimpleNamespace(dag_id="d" * 200, run_id="r" * 250, task_id="t" * 146, map_index=1023)  # 600
    metadata = RESULT.s3_metadata("prompt", [f"s3://in/{'x' * 1000}.png"], made_by=ti)
    assert metadata["run-id"] == "r" * 250
    assert sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items()) <= 2048
