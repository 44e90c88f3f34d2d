from __future__ import annotations

import base64
import json

import pytest

from airflow_bettertoken.exceptions import BetterTokenInputError, BetterTokenResponseError
from airflow_bettertoken.protocol.wire import (
    MAX_IMAGE_BYTES,
    OMITTABLE_FIELDS,
    build_edit_request,
    parse_edit_answer,
    parse_error_answer,
    sniff_image_type,
)
from airflow_bettertoken.testing.samples import sample_image

PNG = sample_image(64, 48, "png")
JPEG = sample_image(64, 48, "jpg")
WEBP = sample_image(64, 48, "webp")


@pytest.mark.parametrize(
    ("data", "expected"),
    [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp"), (b"GIF89a....", None), (b"", None)],
    ids=["png", "jpeg", "webp", "gif", "empty"],
)
def test_sniff_image_type(data, expected):
    assert sniff_image_type(data) == expected


def test_one_reference_goes_in_image_with_its_real_content_type():
    request = build_edit_request("make it shine", [PNG], "1024x1024")
    assert request.form_fields() == [
        ("model", "gpt-image-2"),
        ("prompt", "make it shine"),
        ("n", "1"),
        ("size", "1024x1024"),
        ("response_format", "b64_json"),
        ("output_format", "png"),
    ]
    [(field, (filename, content, content_type))] = request.form_files()
    assert (field, filename, content_type) == ("image", "image-1.png", "image/png")
    assert content == PNG


def test_fields_a_gateway_refuses_can_be_left_out_and_only_those():
    request = build_edit_request("make it shine", [PNG], "1024x1024")
    fields = [name for name, _ in request.form_fields(omit={"response_format", "n"})]
    assert fields == ["model", "prompt", "size", "output_format"]
    assert set(OMITTABLE_FIELDS) == {"n", "size", "response_format", "output_format"}


def test_several_references_go_in_repeated_image_brackets_in_order():
    request = build_edit_request("blend", [("a.jpg", JPEG), WEBP, ("c.png", PNG)])
    files = request.form_files()
    assert [(f, name, ctype) for f, (name, _, ctype) in files] == [
        ("image[]", "a.jpg", "image/jpeg"),
        ("image[]", "image-2.webp", "image/webp"),
        ("image[]", "c.png", "image/png"),
    ]


@pytest.mark.parametrize(
    ("prompt", "images", "size", "message"),
    [
        ("", [PNG], "auto", "prompt must be a non-empty string"),
        ("   \n", [PNG], "auto", "prompt must be a non-empty string"),
        ("x" * 32_001, [PNG], "auto", "at most 32000"),
        ("ok", [PNG], "1000x1000", "size '1000x1000' is not allowed"),
        ("ok", [], "auto", "0 reference images given; between 1 and 16"),
        ("ok", [PNG] * 17, "auto", "17 reference images given"),
        ("ok", [b"GIF89a...."], "auto", "not PNG, JPEG or WEBP"),
        ("ok", [("big.png", PNG + b"\0" * MAX_IMAGE_BYTES)], "auto", "at most 52428800 (50 MB)"),
        ("ok", PNG, "auto", "images must be a list"),
        ("ok", ["not bytes"], "auto", "must be bytes"),
    ],
    ids=[
        "empty-prompt",
        "blank-prompt",
        "long-prompt",
        "bad-size",
        "no-images",
        "17-images",
        "gif",
        "over-50mb",
        "bare-bytes",
        "str-item",
    ],
)
def test_bad_input_is_refused_naming_it(prompt, images, size, message):
    with pytest.raises(BetterTokenInputError) as info:
        build_edit_request(prompt, images, size)
    assert message in str(info.value)


def _answer(png: bytes = PNG, **extra) -> bytes:
    document = {"created": 1, "data": [{"b64_json": base64.b64encode(png).decode(), **extra}]}
    return json.dumps(document).encode()


def test_parse_edit_answer_reads_the_real_size_and_extras():
    body = json.dumps(
        {
            "data": [{"b64_json": base64.b64encode(PNG).decode(), "revised_prompt": "café ☕"}],
            "usage": {"total_tokens": 7},
        }
    ).encode()
    answer = parse_edit_answer(body)
    assert (answer.width, answer.height, answer.png) == (64, 48, PNG)
    assert answer.revised_prompt == "café ☕"
    assert answer.usage == {"total_tokens": 7}
    assert "png=" not in repr(answer)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b'{"data": [', "not JSON"),
        (b'{"created": 1}', "no data[0]"),
        (b'{"data": []}', "no data[0]"),
        (b'{"data": [{"url": "https://x"}]}', "no data[0].b64_json"),
        (b'{"data": [{"b64_json": "!!!not base64!!!"}]}', "not valid base64"),
        (_answer(b"GIF89a" + b"\0" * 40), "not a PNG"),
        (_answer(PNG[:20]), "truncated"),
    ],
    ids=["html", "invalid-json", "no-data", "empty-data", "no-b64", "bad-base64", "not-png", "short-png"],
)
def test_malformed_answers_raise_a_short_message(body, message):
    with pytest.raises(BetterTokenResponseError) as info:
        parse_edit_answer(body)
    assert message in str(info.value)
    assert len(str(info.value)) < 200


def test_error_answer_is_cut_short():
    body = json.dumps({"error": {"message": "m" * 1000, "type": "invalid_request_error", "code": "x"}})
    error = parse_error_answer(400, body.encode())
    assert error.code == "x"
    assert len(error.message) < 310
    assert parse_error_answer(502, b"<html>").message == "HTTP 502 with a non-JSON body of 6 bytes"
