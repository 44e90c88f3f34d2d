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
from typing import Annotated, Any, ClassVar, Protocol

from pydantic import AliasChoices, Field, computed_field

from airflow_bettertoken.exceptions import BetterTokenError
from airflow_bettertoken.protocol.record import Record, record
from airflow_bettertoken.protocol.wire import MODEL, EditAnswer

__all__ = [
    "EditFailure",
    "EditResult",
    "EditXCom",
    "OutputReport",
    "SpilledResult",
    "existing_output_xcom",
    "first_line",
    "made_by_metadata",
    "names_sources",
    "size_matches",
    "sources_metadata",
    "was_made_by",
]

# Kept in a failure record: the first line of the error, cut to this length.
_MAX_REASON_CHARS = 500
# S3 user metadata is limited to 2 KB; longer source lists are recorded as a digest.
_MAX_SOURCES_METADATA = 1024
# The same for the task instance's ids (up to 250 characters each): together with the sources, the
# other fields (about 250 characters) and this, the metadata stays under 2 KB.
_MAX_MADE_BY_METADATA = 600


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


def names_sources(metadata: Mapping[str, str], source_uris: list[str]) -> bool:
    """Whether an output's S3 metadata records exactly these sources (in full, or as their digest)."""
    recorded = {k: metadata[k] for k in ("sources", "sources-sha256") if k in metadata}
    return recorded == sources_metadata(source_uris)


class TaskInstanceIdentity(Protocol):
    """What names one task instance: a task instance of the Task SDK, or a row of Airflow's database."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int


def made_by_metadata(ti: TaskInstanceIdentity) -> dict[str, str]:
    """The task instance that wrote an output, as S3 user metadata: its ids, or their digest.

    The gallery reads it back when Airflow no longer keeps the task's rendered fields: XCom can be
    changed through the REST API, an object's metadata only by whoever may write the object.
    """
    ids = {"dag-id": ti.dag_id, "run-id": ti.run_id, "task-id": ti.task_id, "map-index": str(ti.map_index)}
    if sum(map(len, ids.values())) <= _MAX_MADE_BY_METADATA and all(
        value.isascii() and value.isprintable() for value in ids.values()
    ):
        return ids
    text = json.dumps(list(ids.values()))
    return {"made-by-sha256": hashlib.sha256(text.encode()).hexdigest()}


def was_made_by(metadata: Mapping[str, str], ti: TaskInstanceIdentity) -> bool:
    """Whether an output's S3 metadata names this very task instance as the one that wrote it."""
    return all(metadata.get(key) == value for key, value in made_by_metadata(ti).items())


@dataclass(frozen=True)
class _ImageFields:
    """What a result says about its image besides the PNG: its size, the API's word, how it was got."""

    width: int
    height: int
    requested_size: str
    revised_prompt: str | None
    usage: dict[str, Any] | None
    request_id: str | None
    #: The hook's attempts (POSTs of its retry loop) for this image, in the try that got it.
    attempts: int
    elapsed_s: float


@record
class SpilledResult(_ImageFields, Record):
    """A paid image's fields besides its PNG, kept with the image when it could not be written to its
    output (in the spend ledger, or on the worker's disk), so that the result comes back whole."""


@dataclass(frozen=True)
class EditResult(_ImageFields):
    """One generated image, fully checked, and how it was obtained."""

    png: bytes | bytearray = field(repr=False)

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
        """What a spilled image keeps besides its PNG (:class:`SpilledResult`), as JSON."""
        return SpilledResult(**_image_fields(self)).dump()

    @classmethod
    def from_spill_record(
        cls, png: bytes, document: Mapping[str, Any], where: str = "a spilled image's record"
    ) -> EditResult:
        """The result again, from its PNG and its :meth:`to_spill_record`.

        :raises BetterTokenRecordError: when the record is not one.
        """
        spilled = SpilledResult.load(document, where)
        return cls(png=png, **_image_fields(spilled))

    def s3_metadata(
        self, prompt: str, source_uris: list[str], made_by: TaskInstanceIdentity | None = None
    ) -> dict[str, str]:
        """User metadata for the output object; :func:`existing_output_xcom` reads it back.

        :param made_by: the task instance writing the object, recorded by :func:`made_by_metadata`.
        """
        return {
            "model": MODEL,
            "requested-size": self.requested_size,
            "width": str(self.width),
            "height": str(self.height),
            "png-sha256": self.sha256,
            "prompt-sha256": hashlib.sha256(prompt.encode()).hexdigest(),
            **sources_metadata(source_uris),
            **(made_by_metadata(made_by) if made_by is not None else {}),
        }

    def to_xcom(self, output_uri: str, source_uris: list[str], **spend: Any) -> EditXCom:
        """The task's return value for an image this task paid for and wrote.

        :param spend: the spend figures read from the ledger: ``calls``, ``billed_calls``, ``ledger_uri``.
        """
        return EditXCom(
            output_uri=output_uri,
            width=self.width,
            height=self.height,
            requested_size=self.requested_size,
            nbytes=len(self.png),
            sha256=self.sha256,
            model=MODEL,
            source_uris=list(source_uris),
            revised_prompt=self.revised_prompt,
            usage=self.usage,
            request_id=self.request_id,
            elapsed_s=self.elapsed_s,
            skipped=False,
            **spend,
        )


def _image_fields(result: _ImageFields) -> dict[str, Any]:
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(_ImageFields)}


def existing_output_xcom(
    output_uri: str,
    metadata: Mapping[str, str],
    *,
    width: int,
    height: int,
    nbytes: int | None,
    source_uris: list[str],
) -> EditXCom:
    """The task's return value for an output that already existed: nothing was paid this time."""
    return EditXCom(
        output_uri=output_uri,
        width=width,
        height=height,
        requested_size=metadata.get("requested-size"),
        nbytes=nbytes,
        sha256=metadata.get("png-sha256"),
        model=metadata.get("model"),
        source_uris=list(source_uris),
        skipped=True,
    )


@record
class OutputReport:
    """An output as its edit task reports it: the edit's XCom, and each output of its run's manifest."""

    output_uri: str
    width: int
    height: int
    requested_size: str | None
    #: The PNG's size in bytes (the key ``bytes``).
    nbytes: Annotated[
        int | None, Field(validation_alias=AliasChoices("bytes", "nbytes"), serialization_alias="bytes")
    ]
    sha256: str | None


@record
class EditXCom(OutputReport, Record):
    """The edit task's return value: the one definition of its XCom keys, for writers and readers.

    Small and JSON-safe, never image bytes. XCom can be changed through Airflow's REST API, so a
    reader must not let it decide which object is read; it is a report, not a record of truth.
    Its JSON also holds ``bucket``, ``key`` and ``size_matches``, for people reading it in the UI.
    Format 2 names the task's calls ``calls`` (format 1: ``attempts``); it reads format 1.
    """

    FORMAT: ClassVar[int] = 2

    model: str | None
    source_uris: list[str]
    revised_prompt: str | None = None
    usage: dict[str, Any] | None = None
    request_id: str | None = None
    #: Calls this task instance sent for the image, in all its tries, counted in the spend ledger (0 when
    #: skipped). The XCom key ``attempts`` in format 1.
    calls: Annotated[int, Field(validation_alias=AliasChoices("calls", "attempts"))] = 0
    elapsed_s: float = 0.0
    #: True when the output already existed and this task paid nothing.
    skipped: bool = False
    #: Calls for this image that may have been billed, ever, across tries, runs and DAGs (the ledger's).
    billed_calls: int = 0
    #: The spend ledger's record of the output, when this task made or waited for it.
    ledger_uri: str | None = None
    aws_conn_id: str | None = None

    @computed_field
    @property
    def bucket(self) -> str:
        return self.output_uri.removeprefix("s3://").partition("/")[0]

    @computed_field
    @property
    def key(self) -> str:
        return self.output_uri.removeprefix("s3://").partition("/")[2]

    @computed_field
    @property
    def size_matches(self) -> bool | None:
        return size_matches(self.requested_size, self.width, self.height)


@record
class EditFailure(Record):
    """Why one edit failed: the edit task's XCom ``failure`` (a failed task has no return value), an
    entry of its run's manifest, and, when it failed for good, of its chain's record.

    :param error: the error's class, e.g. ``BetterTokenInputError``.
    :param reason: the error's first line, cut short.
    :param for_good: no retry can help (bad input, a spent budget, a paid answer that was unusable):
        a chain of runs does not plan the edit again.
    :param source: the edit's source URI, or URIs (None in a chain's record, which keys it by source).
    :param run_id: the run where it failed, in a chain's record.
    :param evidence_uri: where a paid but unusable answer was kept, for the provider's support.
    """

    reason: str
    error: str | None = None
    for_good: bool = False
    source: str | list[str] | None = None
    dest: str | None = None
    run_id: str | None = None
    aws_conn_id: str | None = None
    evidence_uri: str | None = None
    ledger_uri: str | None = None

    @classmethod
    def from_error(cls, source: Any, dest: Any, error: BaseException, **more: Any) -> EditFailure:
        """Small and JSON-safe: the edit, the error class, the error's first line, cut short.

        Our errors say whether a retry may help; any other error might heal, so it counts as retryable.
        """
        for_good = isinstance(error, BetterTokenError) and not error.retryable
        return cls(
            source=source if isinstance(source, (str, list)) else None,
            dest=dest if isinstance(dest, str) else None,
            error=type(error).__name__,
            reason=first_line(str(error), _MAX_REASON_CHARS),
            for_good=for_good,
            **more,
        )


def first_line(text: str, limit: int) -> str:
    """The first line of a message, cut to ``limit`` characters (and marked so)."""
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit] + "..."
