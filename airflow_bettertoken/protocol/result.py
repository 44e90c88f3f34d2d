"""One edit's result, and the shapes it takes: XCom, S3 object metadata and the spill record.

Every one of those shapes is written here and only here, so that a field added to the
result reaches all of them, and ``size_matches`` has one definition.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from airflow_bettertoken.protocol.wire import MODEL, EditAnswer

__all__ = ["EditResult", "existing_output_xcom", "size_matches", "sources_metadata"]

# S3 user metadata is limited to 2 KB; longer source lists are recorded as a digest.
_MAX_SOURCES_METADATA = 1024
# What a spill record keeps besides the PNG: everything the result holds, so it comes back whole.
_SPILLED_FIELDS = (
    "width",
    "height",
    "requested_size",
    "revised_prompt",
    "usage",
    "request_id",
    "attempts",
    "elapsed_s",
)


def size_matches(requested_size: str | None, width: int, height: int) -> bool | None:
    """Whether the real size is the requested one; None when ``auto`` (or nothing) was asked for."""
    if requested_size in (None, "auto"):
        return None
    return f"{width}x{height}" == requested_size


def sources_metadata(source_uris: list[str]) -> dict[str, str]:
    """The sources as S3 user metadata: the URI list, or its digest when too long or not ASCII."""
    text = json.dumps(source_uris)
    if len(text) <= _MAX_SOURCES_METADATA and text.isascii():
        return {"sources": text}
    return {"sources-sha256": hashlib.sha256(text.encode()).hexdigest()}


@dataclass(frozen=True)
class EditResult:
    """One generated image, fully checked, and how it was obtained."""

    png: bytes | bytearray = field(repr=False)
    width: int
    height: int
    requested_size: str
    revised_prompt: str | None
    usage: dict[str, Any] | None
    request_id: str | None
    attempts: int
    elapsed_s: float

    @classmethod
    def from_answer(cls, answer: EditAnswer, **how: Any) -> EditResult:
        """The answer's fields (the PNG is not copied) plus ``requested_size``, ``request_id``, ..."""
        fields = {f.name: getattr(answer, f.name) for f in dataclasses.fields(answer)}
        return cls(**fields, **how)

    @property
    def size_matches(self) -> bool | None:
        return size_matches(self.requested_size, self.width, self.height)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.png).hexdigest()

    def to_spill_record(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SPILLED_FIELDS}

    @classmethod
    def from_spill_record(cls, png: bytes, record: Mapping[str, Any]) -> EditResult:
        return cls(png=png, **{name: record[name] for name in _SPILLED_FIELDS})

    def s3_metadata(self, prompt: str, source_uris: list[str]) -> dict[str, str]:
        """User metadata for the output object; :func:`existing_output_xcom` reads it back."""
        return {
            "model": MODEL,
            "requested-size": self.requested_size,
            "width": str(self.width),
            "height": str(self.height),
            "png-sha256": self.sha256,
            "prompt-sha256": hashlib.sha256(prompt.encode()).hexdigest(),
            **sources_metadata(source_uris),
        }

    def to_xcom(self, output_uri: str, source_uris: list[str]) -> dict[str, Any]:
        """The task's return value for an image this task paid for and wrote."""
        return _xcom(
            output_uri,
            width=self.width,
            height=self.height,
            requested_size=self.requested_size,
            nbytes=len(self.png),
            sha256=self.sha256,
            model=MODEL,
            source_uris=source_uris,
            result=self,
        )


def existing_output_xcom(
    output_uri: str,
    metadata: Mapping[str, str],
    *,
    width: int,
    height: int,
    nbytes: int | None,
    source_uris: list[str],
) -> dict[str, Any]:
    """The task's return value for an output that already existed: nothing was paid this time."""
    return _xcom(
        output_uri,
        width=width,
        height=height,
        requested_size=metadata.get("requested-size"),
        nbytes=nbytes,
        sha256=metadata.get("png-sha256"),
        model=metadata.get("model"),
        source_uris=source_uris,
        result=None,
    )


def _xcom(
    output_uri: str,
    *,
    width: int,
    height: int,
    requested_size: str | None,
    nbytes: int | None,
    sha256: str | None,
    model: str | None,
    source_uris: list[str],
    result: EditResult | None,
) -> dict[str, Any]:
    """The one place the XCom record's keys are written: small and JSON-safe, never image bytes."""
    bucket, _, key = output_uri.removeprefix("s3://").partition("/")
    return {
        "output_uri": output_uri,
        "bucket": bucket,
        "key": key,
        "width": width,
        "height": height,
        "requested_size": requested_size,
        "size_matches": size_matches(requested_size, width, height),
        "bytes": nbytes,
        "sha256": sha256,
        "model": model,
        "source_uris": source_uris,
        "revised_prompt": result.revised_prompt if result else None,
        "usage": result.usage if result else None,
        "request_id": result.request_id if result else None,
        "attempts": result.attempts if result else 0,
        "elapsed_s": result.elapsed_s if result else 0.0,
        "skipped": result is None,
    }
