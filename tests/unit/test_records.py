"""The records that cross layers: the edit task's XCom and its failure record, written and read back."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from airflow_bettertoken.exceptions import BetterTokenInputError
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
    value = json.loads(json.dumps(XCOM.to_xcom()))
    assert (value["bucket"], value["key"], value["bytes"], value["size_matches"]) == (
        "out",
        "edited/mug.png",
        1234,
        False,
    )
    assert EditXCom.from_xcom(value) == XCOM


@pytest.mark.parametrize(
    "value",
    [None, "s3://out/x.png", [], {}, {"output_uri": 7}, {"output_uri": "s3://out/x.png"}],
    ids=["none", "a-string", "a-list", "empty", "uri-not-text", "required-fields-missing"],
)
def test_what_is_not_an_edit_record_reads_as_none(value):
    assert EditXCom.from_xcom(value) is None


def test_a_reader_ignores_keys_it_does_not_know():
    assert EditXCom.from_xcom({**XCOM.to_xcom(), "added_later": 1}) == XCOM


def test_the_failure_record_keeps_the_first_line_of_the_error_cut_short():
    failure = EditFailure.from_error(
        "s3://in/a.png", "s3://out/", BetterTokenInputError("x" * 600 + "\nmore")
    )
    assert (failure.error, len(failure.reason)) == ("BetterTokenInputError", 503)
    assert EditFailure.from_xcom(json.loads(json.dumps(failure.to_xcom()))) == failure
    assert EditFailure.from_xcom({"source": "s3://in/a.png"}) is None
    assert dataclasses.replace(failure, evidence_uri="s3://out/_bettertoken/evidence/a").evidence_uri


@pytest.mark.parametrize(
    "forged",
    [
        {"elapsed_s": "a while"},
        {"source_uris": 7},
        {"source_uris": ["s3://in/a.png", 7]},
        {"width": True},
        {"usage": ["not", "a", "dict"]},
        {"aws_conn_id": {"conn": "x"}},
    ],
    ids=[
        "seconds-as-text",
        "sources-a-number",
        "a-source-a-number",
        "width-a-bool",
        "usage-a-list",
        "conn-a-dict",
    ],
)
def test_a_value_of_another_type_is_no_record(forged):
    """XCom can be written through the REST API: a field of the wrong type must not reach a reader."""
    assert EditXCom.from_xcom({**XCOM.to_xcom(), **forged}) is None


def test_a_failure_record_of_another_type_is_no_record():
    failure = EditFailure.from_error("s3://in/a.png", "s3://out/", ValueError("no"))
    assert EditFailure.from_xcom({**failure.to_xcom(), "reason": ["not", "text"]}) is None


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
