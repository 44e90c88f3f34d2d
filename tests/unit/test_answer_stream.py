"""The streaming decoder gives exactly what a plain JSON parse and base64 decode give."""

from __future__ import annotations

import base64
import json

import pytest

from airflow_bettertoken.exceptions import BetterTokenResponseError
from airflow_bettertoken.protocol.answer_stream import EditAnswerStream
from airflow_bettertoken.testing.samples import sample_image
from tests.broken_pngs import png_claiming

PNG = sample_image(200, 150, "png", seed=3)
B64 = base64.b64encode(PNG).decode()
assert "/" in B64 and "+" in B64  # the escapes below have something to escape


def document(**extra) -> dict:
    return {"created": 1, "data": [{"b64_json": B64, **extra}], "usage": {"total_tokens": 9}}


BODIES = {
    "compact": json.dumps(document(), separators=(",", ":")),
    "spaced": json.dumps(document(), indent=2),
    "escaped-slashes": json.dumps(document()).replace("/", "\\/"),
    "whitespace-around-colon": json.dumps(document()).replace('"b64_json": ', '"b64_json" \n :\t '),
    "b64-last": json.dumps({"usage": {"x": 1}, "data": [{"revised_prompt": "p", "b64_json": B64}]}),
    "extra-fields": json.dumps(
        {**document(url=None, extra={"a": [1, 2]}), "id": "img_1", "model": "gpt-image-2"}
    ),
    "unicode-prompt": json.dumps(document(revised_prompt='café ☕ «b64_json»: "quoted" \\/')),
    "unicode-prompt-raw": json.dumps(document(revised_prompt='日本語 ✨ "b64_json":"'), ensure_ascii=False),
    "decoy-key-first": json.dumps({"meta": {"b64_json": "AAAA"}, "data": [{"b64_json": B64}]}),
    "unicode-escape-in-value": json.dumps(document()).replace(
        B64[:4], "\\u00" + format(ord(B64[0]), "x") + B64[1:4]
    ),
}


def reference(body: bytes) -> bytes:
    return base64.b64decode(json.loads(body)["data"][0]["b64_json"], validate=True)


def streamed(body: bytes, chunk: int):
    stream = EditAnswerStream(len(body))
    for start in range(0, len(body), chunk):
        stream.feed(body[start : start + chunk])
    return stream.finish()


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 4096, 1 << 20], ids=lambda c: f"chunk-{c}")
@pytest.mark.parametrize("name", BODIES)
def test_streamed_png_is_byte_identical_to_the_plain_decode(name, chunk):
    body = BODIES[name].encode()
    answer = streamed(body, chunk)
    assert bytes(answer.png) == reference(body) == PNG
    assert (answer.width, answer.height) == (200, 150)
    assert answer.revised_prompt == json.loads(body)["data"][-1].get("revised_prompt")


BAD_BODIES = {
    "html": b"<html><body>502</body></html>",
    "truncated-json": BODIES["compact"][:-40].encode(),
    "no-data": b'{"created": 1}',
    "bad-base64": json.dumps({"data": [{"b64_json": B64[:-3] + "!!="}]}).encode(),
    "newline-in-base64": json.dumps({"data": [{"b64_json": B64[:40] + "\n" + B64[40:]}]}).encode(),
    "not-png": json.dumps(
        {"data": [{"b64_json": base64.b64encode(b"GIF89a" + bytes(40)).decode()}]}
    ).encode(),
    "bomb": json.dumps(
        {"data": [{"b64_json": base64.b64encode(png_claiming(100_000, 100_000)).decode()}]}
    ).encode(),
    "empty-value": b'{"data": [{"b64_json": ""}]}',
}


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20], ids=lambda c: f"chunk-{c}")
@pytest.mark.parametrize("name", BAD_BODIES)
def test_malformed_bodies_are_refused_just_the_same(name, chunk):
    with pytest.raises(BetterTokenResponseError):
        streamed(BAD_BODIES[name], chunk)


FAST = [
    "compact",
    "spaced",
    "escaped-slashes",
    "whitespace-around-colon",
    "b64-last",
    "extra-fields",
    "unicode-prompt",
]


@pytest.mark.parametrize("name", FAST)
def test_simple_bodies_are_decoded_in_place(name):
    # The in-place path hands back its own buffer; the fallback's plain decode gives bytes.
    assert isinstance(streamed(BODIES[name].encode(), 4096).png, bytearray)


@pytest.mark.parametrize("name", ["decoy-key-first", "unicode-escape-in-value"])
def test_unusual_bodies_fall_back_to_a_full_parse(name):
    assert isinstance(streamed(BODIES[name].encode(), 4096).png, bytes)
