"""A local stand-in for BetterToken's ``/v1/images/edits`` and ``/v1/models``, with fault injection.

Control endpoints under ``/_emulator`` let tests queue faults, change the size map and
latency, and read what the emulator received: how many POSTs came, how many were paid
(an image was generated), and which are still open.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import socket
import struct
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response

from airflow_bettertoken.testing.emulator.imaging import render_edit
from airflow_bettertoken.testing.emulator.request_log import RequestLog
from airflow_bettertoken.testing.emulator.service_spec import (
    FIELDS,
    FILE_FIELDS,
    IMAGE_TYPES,
    MAX_IMAGE_BYTES,
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MODEL,
    sniff_image_type,
)

# The faults "drop" (the connection closes once the request was read), "gateway_timeout" (a 504
# after it was read) and "truncated_png" (a 200 whose PNG is cut short) each leave the client without
# an image that the real service made and billed: each counts in the ledger's ``paid``.
# OpenAI's gpt-image output tokens for a 1024x1024 image at high quality; other sizes scale with the
# pixels (its pricing page lists 4160 for 1024x1024 and about 6200 for 1024x1536 and 1536x1024).
OUTPUT_TOKENS_PER_MEGAPIXEL = 4160
# Input tokens of the prompt text (per character, roughly) and of each reference image.
TEXT_TOKENS_PER_CHAR = 0.25
IMAGE_TOKENS_PER_REFERENCE = 323
GATEWAY_TIMEOUT_PAGE = b"<html><head><title>504 Gateway Time-out</title></head><body>504</body></html>"


@dataclass
class EmulatorConfig:
    """How the emulator behaves.

    :param api_key: the only key accepted; any non-empty bearer token when None.
    :param latency: seconds each edit takes, like the real service's minutes.
    :param size_map: requested tier to the pixels returned, e.g. ``{"1024x1024": "1000x1000"}``.
    :param strict_fields: refuse a form field that the service's page does not list with a 400
        ``unknown_parameter``, as a strict server does; False accepts and ignores it.
    :param refused_fields: fields refused as unknown although the page lists them, to play a stricter
        gateway: ``("response_format",)`` answers as OpenAI does for gpt-image models.
    :param usage: the ``usage`` every answer reports, exactly; None reports :func:`default_usage`.
    :param output_tokens: output tokens by requested size, over the default (scaled by pixels).
    :param send_usage: False leaves ``usage`` out of the answer, as some gateways do.
    """

    api_key: str | None = None
    latency: float = 0.0
    size_map: dict[str, str] = field(default_factory=dict)
    strict_fields: bool = True
    refused_fields: tuple[str, ...] = ()
    usage: dict[str, Any] | None = None
    output_tokens: dict[str, int] = field(default_factory=dict)
    send_usage: bool = True

    def copy(self, **changes: Any) -> EmulatorConfig:
        copied = {"size_map": dict(self.size_map), "output_tokens": dict(self.output_tokens)}
        return dataclasses.replace(self, **{**copied, **changes})

    def usage_of(self, prompt: str, images: int, size: str) -> dict[str, Any] | None:
        """The ``usage`` of an answer, shaped like OpenAI's image API; None when it sends none."""
        if not self.send_usage:
            return None
        if self.usage is not None:
            return dict(self.usage)
        return default_usage(prompt, images, size, self.output_tokens.get(size))


def default_usage(prompt: str, images: int, size: str, output_tokens: int | None = None) -> dict[str, Any]:
    """OpenAI's image API usage: input tokens split into text and image, output tokens by size."""
    text = max(1, round(len(prompt) * TEXT_TOKENS_PER_CHAR))
    image = IMAGE_TOKENS_PER_REFERENCE * images
    if output_tokens is None:
        width, _, height = size.partition("x")
        megapixels = int(width) * int(height) / (1024 * 1024) if size != "auto" else 1.0
        output_tokens = round(OUTPUT_TOKENS_PER_MEGAPIXEL * megapixels)
    return {
        "input_tokens": text + image,
        "input_tokens_details": {"text_tokens": text, "image_tokens": image},
        "output_tokens": output_tokens,
        "total_tokens": text + image + output_tokens,
    }


@dataclass
class Ledger:
    """What the emulator has received since the last reset."""

    posts: int = 0
    paid: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    open: dict[int, dict[str, Any]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "posts": self.posts,
            "paid": self.paid,
            "open": list(self.open.values()),
            "requests": self.requests,
        }


class EmulatorError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_response(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return JSONResponse(body, status_code=status)


def reset_connection(receive: Any) -> None:
    """Send a TCP reset on the connection under this request. Works under uvicorn only."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("connection faults need the emulator to run under uvicorn")
    sock = transport.get_extra_info("socket")
    if sock is not None:  # linger 0 turns the close into a reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class ResetResponse(Response):
    """Answers nothing: the connection is reset before any byte is sent."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        reset_connection(receive)


class TruncatedResponse(Response):
    """Sends the headers and half of ``body``, then resets the connection."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send(
            {"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True}
        )
        await asyncio.sleep(0.05)  # let the partial body leave before the reset
        reset_connection(receive)


def _check_auth(request: Request, config: EmulatorConfig) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise EmulatorError(401, "You didn't provide an API key.", "missing_api_key")
    if config.api_key is not None and token != config.api_key:
        raise EmulatorError(401, "Incorrect API key provided.", "invalid_api_key")


async def _check_images(form: Any) -> list[bytes]:
    single, repeated = form.getlist("image"), form.getlist("image[]")
    if single and repeated:
        raise EmulatorError(
            400, "Send one reference as 'image' or several as 'image[]', not both.", "invalid_value"
        )
    if len(single) > 1:
        raise EmulatorError(
            400, "Several references go in repeated 'image[]' fields.", "invalid_value", "image"
        )
    uploads = single or repeated
    if not 1 <= len(uploads) <= MAX_IMAGES:
        raise EmulatorError(400, f"Between 1 and {MAX_IMAGES} images are required.", "invalid_value", "image")
    images = []
    for upload in uploads:
        if not isinstance(upload, UploadFile):
            raise EmulatorError(400, "Each image must be a file upload.", "invalid_value", "image")
        content_type = (upload.content_type or "").split(";")[0].strip()
        if content_type not in IMAGE_TYPES:
            raise EmulatorError(
                400,
                f"Invalid file '{upload.filename}': unsupported mimetype ('{content_type}'). "
                "Supported file formats are 'image/jpeg', 'image/png', and 'image/webp'.",
                "unsupported_file_mimetype",
                "image",
            )
        data = await upload.read()
        if len(data) > MAX_IMAGE_BYTES:
            raise EmulatorError(400, f"Image '{upload.filename}' is larger than 50 MB.", "image_too_large")
        if sniff_image_type(data) != content_type:
            raise EmulatorError(
                400, f"Image '{upload.filename}' is not a valid {content_type} file.", "invalid_image_format"
            )
        images.append(data)
    return images


def _check_known_fields(form: Any, config: EmulatorConfig) -> None:
    """Refuse a field the page does not list (or one this emulator plays a gateway that refuses)."""
    for name in dict.fromkeys(form.keys()):
        listed = name in FIELDS or name in FILE_FIELDS
        if name in config.refused_fields or (config.strict_fields and not listed):
            raise EmulatorError(400, f"Unknown parameter: '{name}'.", "unknown_parameter", name)


def _check_fields(form: Any) -> tuple[str, str]:
    """Check each listed text field against the page's table; the prompt and size come back."""

    def value(name: str) -> str | None:
        got = form.get(name)
        return got if isinstance(got, str) else FIELDS[name][1]

    if value("model") != MODEL:
        raise EmulatorError(
            400, f"Invalid model {value('model')!r}; use '{MODEL}'.", "invalid_model", "model"
        )
    prompt = value("prompt") or ""
    if not prompt.strip():
        raise EmulatorError(400, "prompt is required.", "invalid_value", "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise EmulatorError(
            400, f"prompt is longer than {MAX_PROMPT_CHARS} characters.", "string_above_max_length"
        )
    for name in ("n", "size", "response_format", "output_format"):
        allowed = FIELDS[name][0] or ()
        if value(name) not in allowed:
            raise EmulatorError(
                400,
                f"Invalid {name} {value(name)!r}; supported: {', '.join(allowed)}.",
                "invalid_value",
                name,
            )
    return prompt, value("size") or "auto"


def _fault_response(fault: dict[str, Any]) -> Response:
    headers = fault.get("headers") or {}
    if "json" in fault:
        body = json.dumps(fault["json"]).encode()
        headers = {"content-type": "application/json", **headers}
    elif "body_b64" in fault:
        body = base64.b64decode(fault["body_b64"])
    else:
        body = str(fault.get("body", "")).encode()
    return Response(body, status_code=int(fault.get("status", 200)), headers=headers)


def create_app(config: EmulatorConfig | None = None) -> FastAPI:
    """The emulator as an ASGI app; serve it with uvicorn (connection faults need uvicorn)."""
    initial = config or EmulatorConfig()
    app = FastAPI(title="BetterToken emulator", docs_url=None, redoc_url=None)
    app.add_middleware(RequestLog)
    state = {"config": initial.copy()}
    ledger = Ledger()
    faults: deque[dict[str, Any]] = deque()
    ids = itertools.count(1)

    @app.exception_handler(EmulatorError)
    async def _emulator_error(request: Request, err: EmulatorError) -> JSONResponse:
        return error_response(err.status, err.message, err.code, err.param)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        _check_auth(request, state["config"])
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bettertoken"}]}

    @app.post("/v1/images/edits")
    async def edit_image(request: Request) -> Response:
        config: EmulatorConfig = state["config"]
        request_id = next(ids)
        ledger.posts += 1
        ledger.open[request_id] = {
            "id": request_id,
            "idempotency_key": request.headers.get("idempotency-key"),
            "since": time.time(),
        }
        entry: dict[str, Any] = {
            "id": request_id,
            "idempotency_key": request.headers.get("idempotency-key"),
            "started": time.time(),
            "finished": None,
        }
        ledger.requests.append(entry)
        try:
            form = await request.form()
            entry["fields"] = {k: v for k, v in form.multi_items() if isinstance(v, str)}
            entry["files"] = [
                {"field": k, "filename": v.filename, "content_type": v.content_type, "bytes": v.size}
                for k, v in form.multi_items()
                if isinstance(v, UploadFile)
            ]
            _check_auth(request, config)
            _check_known_fields(form, config)
            prompt, size = _check_fields(form)
            images = await _check_images(form)
            request.state.images = len(images)
            fault = faults.popleft() if faults else None
            entry["fault"] = fault and (fault.get("action") or fault.get("status"))
            if fault and fault.get("action") == "reset":
                ledger.paid += bool(fault.get("paid", False))
                return ResetResponse()
            if fault and fault.get("action") in ("drop", "gateway_timeout"):
                # The service read the request and made the image (and billed it); the client gets none.
                ledger.paid += 1
                await asyncio.sleep(float(fault.get("seconds", 0)))
                if fault["action"] == "drop":
                    return ResetResponse()
                if fault["action"] == "gateway_timeout":
                    return Response(GATEWAY_TIMEOUT_PAGE, status_code=504, media_type="text/html")
            if fault and "action" not in fault:
                ledger.paid += bool(fault.get("paid", int(fault.get("status", 200)) == 200))
                return _fault_response(fault)
            # From here an image is generated: the real service bills it, even if the client is gone.
            ledger.paid += 1
            await asyncio.sleep(config.latency + float((fault or {}).get("seconds", 0)))
            png = await run_in_threadpool(render_edit, images[0], size, config.size_map)
            body: dict[str, Any] = {
                "created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(png).decode(), "revised_prompt": prompt}],
            }
            usage = config.usage_of(prompt, len(images), size)
            if usage is not None:
                body["usage"] = usage
            headers = {"x-request-id": f"req_{uuid.uuid4().hex[:16]}"}
            if fault and fault.get("action") == "truncated_png":
                cut = base64.b64encode(png[: len(png) // 2]).decode()
                body["data"][0]["b64_json"] = cut
                return JSONResponse(body, headers=headers)
            if fault and fault.get("action") == "truncate":
                return TruncatedResponse(
                    json.dumps(body).encode(), headers=headers, media_type="application/json"
                )
            return JSONResponse(body, headers=headers)
        finally:
            entry["finished"] = time.time()
            ledger.open.pop(request_id, None)

    @app.post("/_emulator/faults")
    async def queue_faults(request: Request) -> dict[str, int]:
        faults.extend(await request.json())
        return {"queued": len(faults)}

    @app.post("/_emulator/config")
    async def configure(request: Request) -> dict[str, Any]:
        changes = await request.json()
        config = state["config"]
        state["config"] = config.copy(
            api_key=changes.get("api_key", config.api_key),
            latency=float(changes.get("latency", config.latency)),
            size_map=dict(changes.get("size_map", config.size_map)),
            strict_fields=bool(changes.get("strict_fields", config.strict_fields)),
            refused_fields=tuple(changes.get("refused_fields", config.refused_fields)),
            usage=changes.get("usage", config.usage),
            output_tokens=dict(changes.get("output_tokens", config.output_tokens)),
            send_usage=bool(changes.get("send_usage", config.send_usage)),
        )
        return {"latency": state["config"].latency, "size_map": state["config"].size_map}

    @app.get("/_emulator/stats")
    async def stats() -> dict[str, Any]:
        return ledger.as_json()

    @app.post("/_emulator/reset")
    async def reset() -> dict[str, bool]:
        nonlocal ledger
        ledger = Ledger()
        faults.clear()
        state["config"] = initial.copy()
        return {"reset": True}

    return app
