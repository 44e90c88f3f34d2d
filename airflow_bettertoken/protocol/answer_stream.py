"""Decoding a success answer as it streams in, without ever holding its base64 text.

A 4K answer is a PNG of about 25 MB inside about 33 MB of JSON. Reading the body, parsing
it and decoding the string holds three copies at once. :class:`EditAnswerStream` finds
``"b64_json": "`` in the body, decodes the base64 chunk by chunk into one growing buffer,
and keeps only the small JSON around it. When the body is not in that simple shape
(another escape than ``\\/``, a second ``b64_json`` key, a broken string), it falls back
to a full JSON parse of an equivalent body, so the answer is the same either way.

Pure code with no I/O: the transport feeds it chunks.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

import pybase64

from airflow_bettertoken.exceptions import BetterTokenResponseError
from airflow_bettertoken.protocol.png import DEFAULT_MAX_PIXELS
from airflow_bettertoken.protocol.wire import EditAnswer, answer_from_document, parse_edit_answer

_KEY = re.compile(rb'"b64_json"\s*:\s*"')
# The key must turn up within this much JSON; past it, the body is parsed whole.
_MAX_HEAD = 1024 * 1024
_BASE64_QUARTET = 4


class EditAnswerStream:
    """Feed the raw body with :meth:`feed`, then call :meth:`finish` for the checked answer.

    :param expected_bytes: the body's Content-Length, if known, to size the PNG buffer once.
    """

    def __init__(self, expected_bytes: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self._max_pixels = max_pixels
        self._head = bytearray()  # the JSON up to and including the value's opening quote
        self._tail = bytearray()  # the JSON from the value's closing quote on
        self._png = bytearray()
        self._png_size = 0
        self._reserve = (expected_bytes or 0) * 3 // 4
        self._carry = b""  # base64 text not decoded yet: less than a quartet, or a split escape
        self._state = "head"  # head -> value -> tail; or raw when falling back
        self._raw: list[bytes] = []

    def feed(self, chunk: bytes) -> None:
        if self._state == "head":
            self._feed_head(chunk)
        elif self._state == "value":
            self._feed_value(chunk)
        elif self._state == "tail":
            self._tail += chunk
        else:
            self._raw.append(chunk)

    def finish(self) -> EditAnswer:
        """The answer, checked exactly as :func:`.wire.parse_edit_answer` does.

        :raises BetterTokenResponseError: with ``evidence``: the decoded image, or the whole body.
        """
        try:
            if self._state == "tail":
                answer = self._finish_fast()
                if answer is not None:
                    return answer
            if self._state != "raw":
                self._fall_back(b"")
            return parse_edit_answer(b"".join(self._raw), self._max_pixels)
        except BetterTokenResponseError as err:
            err.evidence = (
                bytes(self._png[: self._png_size]) if self._state == "tail" else b"".join(self._raw)
            )
            raise

    def _feed_head(self, chunk: bytes) -> None:
        start = max(0, len(self._head) - 32)  # the key may straddle two chunks
        self._head += chunk
        match = _KEY.search(self._head, start)
        if match is None:
            if len(self._head) > _MAX_HEAD:
                self._fall_back(b"")
            return
        rest = bytes(self._head[match.end() :])
        del self._head[match.end() :]
        self._png = bytearray(self._reserve)  # zero pages: memory is taken only as it is written
        self._state = "value"
        self._feed_value(rest)

    def _feed_value(self, chunk: bytes) -> None:
        end = chunk.find(b'"')
        text = self._carry + (chunk if end < 0 else chunk[:end])
        held = b""
        if b"\\" in text:
            # JSON may write "/" as "\/". A backslash ending the chunk waits for the rest of its escape.
            if end < 0 and text.endswith(b"\\"):
                text, held = text[:-1], b"\\"
            text = text.replace(b"\\/", b"/")
            if b"\\" in text:  # any other escape: not the simple shape
                self._fall_back(chunk)
                return
        cut = len(text) if end >= 0 else len(text) - len(text) % _BASE64_QUARTET
        try:
            self._decode(text[:cut])
        except (binascii.Error, ValueError):
            self._fall_back(chunk)
            return
        self._carry = text[cut:] + held
        if end >= 0:
            self._state = "tail"
            self._tail += chunk[end:]

    def _decode(self, text: bytes) -> None:
        if not text:
            return
        decoded = pybase64.b64decode(text, validate=True)
        end = self._png_size + len(decoded)
        if end > len(self._png):
            self._png.extend(bytes(end - len(self._png)))
        self._png[self._png_size : end] = decoded
        self._png_size = end

    def _fall_back(self, unread: bytes) -> None:
        """Rebuild an equivalent body from what was kept, and parse it whole from now on."""
        decoded = base64.b64encode(memoryview(self._png)[: self._png_size])
        self._raw = [bytes(self._head), decoded, self._carry, unread, bytes(self._tail)]
        self._head, self._tail, self._png, self._carry = bytearray(), bytearray(), bytearray(), b""
        self._png_size = 0
        self._state = "raw"

    def _finish_fast(self) -> EditAnswer | None:
        """Check the JSON around the value; None if the key was not ``data[0].b64_json``."""
        try:
            skeleton = json.loads(bytes(self._head + self._tail))
            value = skeleton["data"][0]["b64_json"]
        except (ValueError, TypeError, KeyError, IndexError):
            return None
        if value != "" or self._png_size == 0:
            return None
        del self._png[self._png_size :]  # shrinks in place: no second copy of the image
        return answer_from_document(skeleton, self._png, self._max_pixels)
