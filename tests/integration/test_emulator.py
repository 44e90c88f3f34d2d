"""The emulator accepts exactly what the official openai SDK sends, and refuses what it should."""

from __future__ import annotations

import base64
import re

import openai
import pytest
import requests

from airflow_bettertoken.protocol.png import read_png_header
from airflow_bettertoken.testing.samples import sample_image

PNG = sample_image(300, 200, "png")
JPEG = sample_image(200, 300, "jpg", seed=1)


@pytest.fixture
def client(sandbox):
    return openai.OpenAI(api_key=sandbox.api_key, base_url=sandbox.emulator.base_url, max_retries=0)


def test_openai_sdk_with_one_image(client, emulator):
    response = client.images.edit(
        model="gpt-image-2",
        image=("mug.png", PNG, "image/png"),
        prompt="studio shot",
        size="1536x1024",
        n=1,
        response_format="b64_json",
        output_format="png",
    )
    header = read_png_header(base64.b64decode(response.data[0].b64_json))
    assert (header.width, header.height) == (1536, 1024)
    [received] = emulator.stats()["requests"]
    assert [f["field"] for f in received["files"]] == ["image"]


def test_openai_sdk_with_several_images(client, emulator):
    response = client.images.edit(
        model="gpt-image-2",
        image=[("a.png", PNG, "image/png"), ("b.jpg", JPEG, "image/jpeg")],
        prompt="combine",
    )
    assert response.data[0].b64_json
    [received] = emulator.stats()["requests"]
    assert [f["field"] for f in received["files"]] == ["image[]", "image[]"]


def _post(sandbox, files, key=None, **fields):
    form = {"model": "gpt-image-2", "prompt": "x", **fields}
    return requests.post(
        sandbox.emulator.base_url + "/images/edits",
        headers={"Authorization": f"Bearer {key or sandbox.api_key}"},
        data=form,
        files=files,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("files", "fields", "key", "status", "code"),
    [
        ([("image", ("a.png", PNG, "image/png"))], {}, "sk-wrong", 401, "invalid_api_key"),
        ([("image", ("a.png", PNG, "application/octet-stream"))], {}, None, 400, "unsupported_file_mimetype"),
        ([("image", ("a.png", JPEG, "image/png"))], {}, None, 400, "invalid_image_format"),
        ([("image", ("a.png", PNG, "image/png"))], {"size": "999x999"}, None, 400, "invalid_value"),
        ([("image", ("a.png", PNG, "image/png"))], {"model": "dall-e-2"}, None, 400, "invalid_model"),
        ([("image", ("a.png", PNG, "image/png"))], {"n": "2"}, None, 400, "invalid_value"),
        ([("image[]", ("a.png", PNG, "image/png"))] * 17, {}, None, 400, "invalid_value"),
        ([], {}, None, 400, "invalid_value"),
    ],
    ids=["bad-key", "octet-stream", "type-lies", "bad-size", "bad-model", "n-2", "17-images", "no-image"],
)
def test_emulator_refuses_bad_requests_openai_style(sandbox, emulator, files, fields, key, status, code):
    response = _post(sandbox, files, key, **fields)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert emulator.stats()["paid"] == 0


@pytest.mark.parametrize(
    "fields",
    [{"quality": "high"}, {"background": "transparent"}, {"stream": "true"}, {"user": "me"}],
    ids=["quality", "background", "stream", "user"],
)
def test_the_emulator_refuses_a_field_the_services_page_does_not_list(sandbox, emulator, fields):
    """OpenAI's API has these fields; BetterToken's page does not, so a strict server refuses them."""
    response = _post(sandbox, [("image", ("a.png", PNG, "image/png"))], **fields)
    [name] = fields
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": f"Unknown parameter: '{name}'.",
        "type": "invalid_request_error",
        "code": "unknown_parameter",
        "param": name,
    }
    assert emulator.stats()["paid"] == 0


def test_unknown_fields_can_be_accepted_when_asked(sandbox, emulator):
    emulator.configure(strict_fields=False)
    response = _post(sandbox, [("image", ("a.png", PNG, "image/png"))], quality="high")
    assert response.status_code == 200
    assert emulator.stats()["paid"] == 1


def test_the_openai_sdk_gets_a_strict_gateways_refusal_as_openai_would_give_it(client, emulator):
    emulator.configure(refused_fields=["response_format"])
    with pytest.raises(openai.BadRequestError, match="Unknown parameter: 'response_format'"):
        client.images.edit(
            model="gpt-image-2", image=("a.png", PNG, "image/png"), prompt="p", response_format="b64_json"
        )
    response = client.images.edit(model="gpt-image-2", image=("a.png", PNG, "image/png"), prompt="p")
    assert response.data[0].b64_json


def test_the_emulator_logs_one_line_per_request_and_never_the_key(tmp_path):
    """Run as a user runs it, in its own process: each request is one line on its output."""
    import os
    import subprocess
    import sys

    from tests.ports import free_port, wait_for_port

    port, key = free_port(), "sk-emulator-log-test-0123456789"
    output = (tmp_path / "emulator.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_bettertoken.testing.emulator", "--port", str(port)],
        env={**os.environ, "BETTERTOKEN_EMULATOR_API_KEY": key},
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, process, "the emulator")
        auth = {"Authorization": f"Bearer {key}"}
        requests.post(
            f"http://127.0.0.1:{port}/v1/images/edits",
            headers=auth,
            data={"model": "gpt-image-2", "prompt": "p", "size": "1024x1024"},
            files=[("image[]", ("a.png", PNG, "image/png")), ("image[]", ("b.jpg", JPEG, "image/jpeg"))],
            timeout=60,
        ).raise_for_status()
        requests.get(f"http://127.0.0.1:{port}/models", headers=auth, timeout=10)  # no /v1: a 404
    finally:
        process.terminate()
        process.wait(timeout=10)
    text = (tmp_path / "emulator.log").read_text()
    logged = re.findall(r"(GET|POST) (\S+) (\d+) \d+ ms images=(\d+)", text)
    assert logged == [("POST", "/v1/images/edits", "200", "2"), ("GET", "/models", "404", "0")]
    assert key not in text
