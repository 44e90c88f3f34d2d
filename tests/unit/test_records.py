"""The records that cross layers: the edit task's XCom and its failure record, written and read back."""

from __future__ import annotations

import dataclasses
import json

import pytest

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.protocol.result import EditFailure, EditXCom

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
