"""The API key appears nowhere: logs, output, exceptions, tracebacks, XCom, template fields, reprs."""

from __future__ import annotations

import logging
import traceback

import pytest

from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.testing.samples import sample_image

PNG = sample_image(120, 90)

FAULTS = {
    "success": None,
    "401": {"status": 401, "json": {"error": {"message": "Incorrect API key provided."}}},
    "400-policy": {"status": 400, "json": {"error": {"message": "Rejected by the safety system."}}},
    "500-until-budget-spent": {"status": 500, "json": {"error": {"message": "down"}}},
    "reset": {"action": "reset"},
    "malformed-200": {"status": 200, "body": "<html>oops</html>"},
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_the_key_is_never_shown(s3, buckets, emulator, api_key, task_context, capfd, caplog, fault):
    caplog.set_level(logging.DEBUG)
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=PNG)
    if fault is not None:
        emulator.queue(*[fault] * 4)
    op = BetterTokenImageEditOperator(
        task_id="edit", prompt="p", source=f"s3://{buckets.src}/a.png", dest=f"s3://{buckets.out}/a.png"
    )
    seen = []
    try:
        seen.append(repr(op.execute(task_context)))
    except Exception as err:
        seen.append("".join(traceback.format_exception(err)))
    seen += [repr(op), repr(op.hook), repr(op.hook._settings), caplog.text, *capfd.readouterr()]
    seen += [repr(getattr(op, field)) for field in op.template_fields]

    assert emulator.stats()["posts"] >= 1
    assert not [text for text in seen if api_key in text]


def test_the_key_is_registered_with_the_secrets_masker(emulator, api_key):
    from airflow.providers.common.compat.sdk import redact

    BetterTokenHook().check_config()  # reading the connection is what registers the key
    assert redact(f"Authorization: Bearer {api_key}") == "Authorization: Bearer ***"


def test_a_server_message_quoting_the_key_is_redacted(emulator, api_key):
    emulator.queue({"status": 401, "json": {"error": {"message": f"Incorrect API key provided: {api_key}"}}})
    with pytest.raises(Exception) as info:
        BetterTokenHook().edit_image("p", [PNG])
    assert api_key not in str(info.value)
    assert "Incorrect API key provided: ***" in str(info.value)
