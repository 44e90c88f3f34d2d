"""The wire protocol of ``POST /images/edits``: checking inputs, building the form, reading the answer.

Plain functions and data classes with no I/O and no transport, so that every
transport (the synchronous hook now, an async one later) shares them.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import pybase64

from airflow_bettertoken.exceptions import BetterTokenInputError, BetterTokenResponseError
from airflow_bettertoken.protocol.png import DEFAULT_MAX_PIXELS, read_png_header

MODEL = "gpt-image-2"
DEFAULT_BASE_URL = "https://www.bettertoken.ai/v1"
EDITS_PATH = "/images/edits"
MODELS_PATH = "/models"

SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536", "2048x2048", "2048x1152", "3840x2160", "2160x3840")
MAX_IMAGES = 16
MAX_PROMPT_CHARS = 32_000
MAX_IMAGE_BYTES = 50 * 1024 * 1024
# Longest server error message kept in an exception; the rest is cut, never dumped.
MAX_ERROR_MESSAGE_CHARS = 300

IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}

#: Form fields that may be left out for a server that refuses them (connection extra ``omit_fields``).
#: OpenAI itself and strict OpenAI-compatible gateways answer "Unknown parameter: 'response_format'"
#: for gpt-image models, which always answer in ``b64_json``. ``model``, ``prompt`` and the images
#: are always sent.
OMITTABLE_FIELDS = ("n", "size", "response_format", "output_format")

ImageInput = bytes | tuple[str, bytes]


def sniff_image_type(data: bytes) -> str | None:
    """The content type from the magic bytes, if PNG, JPEG or WEBP; otherwise None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def check_prompt(prompt: object) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise BetterTokenInputError("prompt must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BetterTokenInputError(
            f"prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are allowed"
        )
    return prompt


def check_size(size: object) -> str:
    if size not in SIZES:
        raise BetterTokenInputError(f"size {size!r} is not allowed; use one of: {', '.join(SIZES)}")
    return size  # type: ignore[return-value]


def check_image_count(count: int) -> None:
    if not 1 <= count <= MAX_IMAGES:
        raise BetterTokenInputError(f"{count} reference images given; between 1 and {MAX_IMAGES} are allowed")


def check_image(name: str, data: bytes) -> str:
    """Refuse a reference that is too large or not PNG, JPEG or WEBP; return its content type."""
    if len(data) > MAX_IMAGE_BYTES:
        raise BetterTokenInputError(
            f"reference image {name} is {len(data)} bytes; at most {MAX_IMAGE_BYTES} (50 MB) are allowed"
        )
    content_type = sniff_image_type(data)
    if content_type is None:
        raise BetterTokenInputError(
            f"reference image {name} is not PNG, JPEG or WEBP (its first bytes are {data[:8]!r})"
        )
    return content_type


@dataclass(frozen=True)
class ImageFile:
    """One reference image as it goes on the wire."""

    filename: str
    content_type: str
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class EditRequest:
    """A checked edit request: the form fields and files of one ``POST /images/edits``."""

    prompt: str = field(repr=False)
    size: str
    images: tuple[ImageFile, ...]

    def form_fields(self, omit: Collection[str] = ()) -> list[tuple[str, str]]:
        """BetterToken's documented form, less the :data:`OMITTABLE_FIELDS` named in ``omit``."""
        fields = [
            ("model", MODEL),
            ("prompt", self.prompt),
            ("n", "1"),
            ("size", self.size),
            ("response_format", "b64_json"),
            ("output_format", "png"),
        ]
        return [(name, value) for name, value in fields if name not in omit]

    def form_files(self) -> list[tuple[str, tuple[str, bytes, str]]]:
        """One reference goes in ``image``; several go in ``image[]``, repeated, in order."""
        name = "image" if len(self.images) == 1 else "image[]"
        return [(name, (img.filename, img.content, img.content_type)) for img in self.images]


def build_edit_request(prompt: str, images: Sequence[ImageInput], size: str = "auto") -> EditRequest:
    """Check every input and build the request; nothing is sent here.

    :param images: 1 to 16 references, each ``bytes`` or a ``(filename, bytes)`` pair.
    :raises BetterTokenInputError: naming the first bad input.
    """
    check_prompt(prompt)
    check_size(size)
    if isinstance(images, (bytes, bytearray, str)) or not isinstance(images, Sequence):
        raise BetterTokenInputError("images must be a list of bytes or (filename, bytes) pairs")
    check_image_count(len(images))
    files = []
    for index, item in enumerate(images, start=1):
        filename, data = item if isinstance(item, tuple) else (None, item)
        if not isinstance(data, (bytes, bytearray)):
            raise BetterTokenInputError(f"reference image {index} must be bytes, got {type(data).__name__}")
        content_type = check_image(filename or f"#{index}", bytes(data))
        filename = filename or f"image-{index}.{IMAGE_TYPES[content_type]}"
        files.append(ImageFile(filename, content_type, bytes(data)))
    return EditRequest(prompt, size, tuple(files))


@dataclass(frozen=True)
class EditAnswer:
    """A checked success answer: the PNG, its real size, and what else the API said.

    ``png`` is a ``bytearray`` when the answer was decoded as it streamed in (no copy was made).
    """

    png: bytes | bytearray = field(repr=False)
    width: int
    height: int
    revised_prompt: str | None = None
    usage: dict[str, Any] | None = None


def parse_edit_answer(body: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> EditAnswer:
    """Check a whole 200 answer: JSON, ``data[0].b64_json`` present, valid base64, a PNG with a readable IHDR.

    :raises BetterTokenResponseError: with a short message that never quotes the body.
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as err:
        raise BetterTokenResponseError(
            f"the answer is not JSON ({len(body)} bytes, starting {body[:15]!r})"
        ) from err
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise BetterTokenResponseError("the answer has no data[0]")
    encoded = data[0].get("b64_json")
    if not isinstance(encoded, str) or not encoded:
        raise BetterTokenResponseError("the answer has no data[0].b64_json")
    try:
        png = pybase64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as err:
        raise BetterTokenResponseError("data[0].b64_json is not valid base64") from err
    return answer_from_document(document, png, max_pixels)


def answer_from_document(document: dict[str, Any], png: bytes | bytearray, max_pixels: int) -> EditAnswer:
    """The answer from its parsed JSON and its decoded PNG, whose header is checked here."""
    header = read_png_header(png, max_pixels)
    revised_prompt = document["data"][0].get("revised_prompt")
    usage = document.get("usage")
    return EditAnswer(
        png=png,
        width=header.width,
        height=header.height,
        revised_prompt=revised_prompt if isinstance(revised_prompt, str) else None,
        usage=usage if isinstance(usage, dict) else None,
    )


@dataclass(frozen=True)
class ErrorAnswer:
    message: str
    code: str | None = None


def parse_error_answer(status: int, body: bytes) -> ErrorAnswer:
    """The OpenAI-style ``{"error": {"message", "type", "code"}}``, cut short; a generic text otherwise."""
    try:
        error = json.loads(body).get("error")
    except (UnicodeDecodeError, ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        return ErrorAnswer(f"HTTP {status} with a non-JSON body of {len(body)} bytes")
    message = str(error.get("message") or f"HTTP {status}")
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS] + "..."
    code = error.get("code") or error.get("type")
    return ErrorAnswer(message, str(code) if code else None)


def fingerprint(*parts: object) -> str:
    """A stable sha256 over the parts, for idempotency keys and spill names."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()
