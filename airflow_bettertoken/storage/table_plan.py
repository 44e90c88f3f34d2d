"""The plan file of a table's run: one JSON line per input row, what became of it and why.

Every run of a table writes it at ``_bettertoken/tables/<dag id>/<run id>/plan.jsonl`` in the
destination bucket, before any paid call; the results table (``storage/results_table.py``) reads it
back, a line at a time, and the run's bad rows are there with their reasons. Written to a temporary
file as the rows stream and uploaded once, create-only.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any, NamedTuple

from airflow_bettertoken.exceptions import BetterTokenRecordError
from airflow_bettertoken.protocol.record import FORMAT_KEY, Record, record
from airflow_bettertoken.storage.listing import ListingCounts
from airflow_bettertoken.storage.locations import RESERVED_PREFIX, S3Location

if TYPE_CHECKING:
    from airflow_bettertoken.storage.chain import ChainState
    from airflow_bettertoken.storage.s3_io import S3IO, PutResult

__all__ = [
    "PLAN_STATES",
    "PlanEntry",
    "PlanRow",
    "RowCounts",
    "chain_key_of",
    "read_plan",
    "table_plan_location",
    "write_plan",
]

#: What became of a row: ``planned`` this run, ``done`` (its output existed), ``bad`` (never paid),
#: ``failed for good`` (in an earlier run of the chain), ``later`` (left for a later run of the chain).
PLAN_STATES = ("planned", "done", "bad", "failed for good", "later")


def table_plan_location(bucket: str, dag_id: str, run_id: str) -> S3Location:
    """Where the run ``run_id`` of ``dag_id`` keeps its plan file."""
    run = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)
    return S3Location(bucket, f"{RESERVED_PREFIX}tables/{dag_id}/{run}/plan.jsonl")


@record
class PlanRow(Record):
    """One input row in the plan file.

    :param key: the row's key (empty for a row without one).
    :param line: where the row is in the table (CSV: its line, the header being 1; XCom: its number).
    :param state: one of :data:`PLAN_STATES`.
    :param dest: the output URI; None for a bad row that names none.
    :param reason: why a row is ``bad`` or ``failed for good``.
    """

    key: str
    line: int
    state: str
    dest: str | None
    prompt: str | None
    size: str | None
    sources: tuple[str, ...] = ()
    reason: str | None = None

    def line_json(self) -> str:
        """The row as one JSON line, as :meth:`dump` writes it."""
        return _line_json(self)


class PlanEntry(NamedTuple):
    """A :class:`PlanRow` as the planner makes it, 100,000 at a time: the same fields and line, without
    validating what the planner built itself."""

    key: str
    line: int
    state: str
    dest: str | None
    prompt: str | None
    size: str | None
    sources: tuple[str, ...] = ()
    reason: str | None = None

    def line_json(self) -> str:
        return _line_json(self)

    def record(self) -> PlanRow:
        return PlanRow(**self._asdict())


def _text(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


# The line as json.dumps writes it, put together from its parts: the one encoding that is paid
# 100,000 times for a table (json.dumps makes an encoder per call, and a dict per row on top).
_LINE = (
    f'{{"{FORMAT_KEY}": {PlanRow.FORMAT}, "key": %s, "line": %d, "state": %s, "dest": %s, '
    '"prompt": %s, "size": %s, "sources": [%s], "reason": %s}'
)


def _line_json(row: PlanRow | PlanEntry) -> str:
    return _LINE % (
        encode_basestring_ascii(row.key),
        row.line,
        encode_basestring_ascii(row.state),
        _text(row.dest),
        _text(row.prompt),
        _text(row.size),
        ", ".join(map(encode_basestring_ascii, row.sources)),
        _text(row.reason),
    )


@record
class RowCounts(ListingCounts):
    """The row planner's XCom ``counts``: a listing's counts (``images`` are the good rows) and ``bad``."""

    bad: int = 0


def write_plan(
    io: S3IO, location: S3Location, rows: Iterable[PlanRow | PlanEntry], *, if_none_match: bool = True
) -> PutResult:
    """Stream ``rows`` to a temporary file and upload it; create-only unless told otherwise.

    :param rows: :class:`PlanRow` records, or the planner's :class:`PlanEntry`, which write the same line.

    :returns: ``written=False`` when a create-only upload found the plan there already.
    """
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".jsonl") as spool:
        for row in rows:
            spool.write(row.line_json() + "\n")
        spool.flush()
        return io.upload_file(spool.name, location, if_none_match=if_none_match)


def read_plan(io: S3IO, location: S3Location) -> Iterator[PlanRow]:
    """The plan file's rows, streamed.

    :raises BetterTokenRecordError: when there is no plan file, or for a line that is no plan row,
        naming the object and the line.
    """
    from airflow_bettertoken.storage.tables import Unreadable, read_jsonl

    for number, row in read_jsonl(io, location, what="plan file"):
        if isinstance(row, Unreadable):
            raise BetterTokenRecordError(f"{location.uri} is no plan file: {row.reason}")
        yield PlanRow.load(row, f"{location.uri} line {number}")


def chain_key_of(edit: Mapping[str, Any], chain: ChainState) -> str:
    """The key by which a chain keeps a planned edit: its row key (``image_label``) in a table's chain,
    whose ``source_uri`` is an object, not a prefix; the source key in a catalog's."""
    if not chain.source_uri.endswith("/"):
        return str(edit["image_label"])
    source = edit["source"] if isinstance(edit["source"], str) else edit["source"][0]
    return source.split("/", 3)[3]
