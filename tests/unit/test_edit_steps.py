"""The edit's inputs and identity, as the steps below the operator take them (edits/steps.py)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from airflow_bettertoken.edits.steps import Edit, holder_of, idempotency_key
from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.protocol.wire import MODEL, fingerprint


def ti(try_number: int = 1, map_index: int = -1, **more) -> SimpleNamespace:
    return SimpleNamespace(
        dag_id="d", run_id="r", task_id="edit", map_index=map_index, try_number=try_number, **more
    )


def test_an_edit_is_named_by_its_inputs_and_its_output_after_the_first_source():
    edit = Edit.check(
        "studio shot", ["s3://in/set/mug.jpg", "s3://in/bg.png"], "s3://out/edited/", "1024x1024"
    )
    assert edit.output.uri == "s3://out/edited/mug.png"
    assert edit.source_uris == ["s3://in/set/mug.jpg", "s3://in/bg.png"]
    assert edit.digest == fingerprint(MODEL, "studio shot", "1024x1024", edit.source_uris, edit.output.uri)
    assert (
        Edit.check("studio shot", "s3://in/set/mug.jpg", "s3://out/edited/", "1024x1024").digest
        != edit.digest
    )


@pytest.mark.parametrize(
    ("prompt", "source", "dest", "size", "names"),
    [
        ("p", "s3://in/a.png", "s3://out/", "huge", "size"),
        ("", "s3://in/a.png", "s3://out/", "auto", "prompt"),
        ("p", "in/a.png", "s3://out/", "auto", "source"),
        ("p", [f"s3://in/{n}.png" for n in range(17)], "s3://out/", "auto", "16"),
    ],
    ids=["size", "prompt", "source", "too-many-sources"],
)
def test_bad_input_is_an_input_error_that_names_it(prompt, source, dest, size, names):
    with pytest.raises(BetterTokenInputError, match=names):
        Edit.check(prompt, source, dest, size)


def test_airflow_retries_send_the_same_idempotency_key_and_other_task_instances_another():
    digest = "abc"
    first, second = holder_of(ti(try_number=1)), holder_of(ti(try_number=2))
    assert idempotency_key(first, digest) == idempotency_key(second, digest)
    assert idempotency_key(first, digest) != idempotency_key(holder_of(ti(map_index=3)), digest)
    # The key as the operator derived it before the steps moved below it: in-flight edits keep theirs.
    assert idempotency_key(first, digest) == fingerprint("d", "edit", "r", -1, digest)


def test_the_holder_names_its_host():
    assert holder_of(ti(hostname="worker-7")).hostname == "worker-7"
    assert holder_of(ti()).hostname == socket.gethostname()
    assert holder_of(ti(try_number=3)).label == f"d/r/edit try 3 on {socket.gethostname()}"
