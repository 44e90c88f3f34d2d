"""Reading a table of rows from S3, a line at a time: JSON Lines, CSV, and Parquet when pyarrow is there.

This is what the Amazon provider's ``SqlToS3Operator`` writes from a SQL query. Rows are streamed
(``S3IO.open``), never held whole. A row that cannot be read (a JSON Lines line that is no JSON
object) comes as a :class:`Unreadable` and is reported as a bad row; a table that cannot be read at
all (bad encoding, a CSV without its header, no such object) is a :class:`BetterTokenInputError`
naming the line or column.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from airflow_bettertoken.exceptions import BetterTokenInputError, BetterTokenRecordError
from airflow_bettertoken.storage.s3_io import Presence

if TYPE_CHECKING:
    from airflow_bettertoken.storage.locations import S3Location
    from airflow_bettertoken.storage.s3_io import S3IO

__all__ = ["TABLE_FORMATS", "Unreadable", "read_jsonl", "read_rows", "table_format_of"]

TABLE_FORMATS = ("jsonl", "csv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
# Parquet rows are read this many at a time.
_PARQUET_BATCH = 4096
# Bytes read from S3 at a time.
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Unreadable:
    """A line of the table that is no row, and why."""

    reason: str


def table_format_of(uri: str, table_format: str | None) -> str:
    """The format named, or the one the key's suffix says (``.csv.gz`` is not read: name the error)."""
    if table_format:
        if table_format not in TABLE_FORMATS:
            raise BetterTokenInputError(
                f"table_format={table_format!r} is not known; use one of: {', '.join(TABLE_FORMATS)}"
            )
        return table_format
    for suffix, found in _SUFFIXES.items():
        if uri.lower().endswith(suffix):
            return found
    raise BetterTokenInputError(
        f"table_uri {uri!r} ends in none of {', '.join(_SUFFIXES)}; name its format with "
        f"table_format (one of: {', '.join(TABLE_FORMATS)})"
    )


def read_rows(
    io: S3IO, location: S3Location, table_format: str
) -> Iterator[tuple[int, Mapping[str, Any] | Unreadable]]:
    """Each row with its line (CSV: the line it starts on, the header being line 1; Parquet: its row
    number), streamed from S3.

    :raises BetterTokenInputError: when the object is missing or hidden, or cannot be read at all.
    """
    body = _open(io, location, "table_uri", BetterTokenInputError)
    with body:
        if table_format == "parquet":
            yield from _parquet_rows(body, location.uri)
        elif table_format == "csv":
            yield from _csv_rows(_text_lines(body, location.uri), location.uri)
        else:
            yield from _jsonl_rows(_text_lines(body, location.uri))


def read_jsonl(
    io: S3IO, location: S3Location, *, what: str
) -> Iterator[tuple[int, Mapping[str, Any] | Unreadable]]:
    """The JSON objects of a JSON Lines object of the provider's own (a plan file), streamed.

    :raises BetterTokenRecordError: when the object is missing or hidden, or not UTF-8.
    """
    with _open(io, location, what, BetterTokenRecordError) as body:
        try:
            yield from _jsonl_rows(_text_lines(body, location.uri))
        except BetterTokenInputError as err:
            raise BetterTokenRecordError(str(err)) from None


def _open(io: S3IO, location: S3Location, what: str, error: type[Exception]) -> BinaryIO:
    read, body = io.open(location)
    if not read.found:
        why = "does not exist" if read.presence is Presence.MISSING else "cannot be read (403: s3:GetObject?)"
        raise error(f"{what} {location.uri} {why}; check {what} and the AWS connection")
    return body


def _text_lines(body: BinaryIO, uri: str) -> Iterator[str]:
    """The body's lines as text (their ends kept, as ``csv`` wants), decoded a block of whole lines at a
    time; bad UTF-8 is named with its line."""
    rest, before = b"", 0
    for chunk in iter(lambda: body.read(_CHUNK), b""):
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            yield from io.StringIO(_decode(data[:cut], before, uri), newline="")
            before += data.count(b"\n", 0, cut)
    if rest:
        yield from io.StringIO(_decode(rest, before, uri), newline="")


def _decode(block: bytes, before: int, uri: str) -> str:
    try:
        # The first block may start with a byte order mark, as Excel writes CSV.
        return block.decode("utf-8-sig" if before == 0 else "utf-8")
    except UnicodeDecodeError as err:
        line = before + block.count(b"\n", 0, err.start) + 1
        start = block.rfind(b"\n", 0, err.start) + 1
        raise BetterTokenInputError(
            f"table {uri} is not UTF-8 text: line {line}, byte {err.start - start + 1} "
            f"({block[err.start : err.start + 4]!r}); write it as UTF-8"
        ) from None


def _jsonl_rows(lines: Iterable[str]) -> Iterator[tuple[int, Mapping[str, Any] | Unreadable]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            yield number, Unreadable(f"line {number} is not JSON ({err.msg} at character {err.pos + 1})")
            continue
        if not isinstance(row, dict):
            yield number, Unreadable(f"line {number} holds a JSON {type(row).__name__}, not an object")
            continue
        yield number, row


def _csv_rows(lines: Iterator[str], uri: str) -> Iterator[tuple[int, Mapping[str, Any] | Unreadable]]:
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise BetterTokenInputError(f"table {uri} is empty: a CSV table needs a header line") from None
    except csv.Error as err:
        raise BetterTokenInputError(f"table {uri}: its header (line 1) is not CSV: {err}") from None
    names = [name.strip() for name in header]
    if not any(names) or len(set(names)) != len(names):
        raise BetterTokenInputError(
            f"table {uri}: line 1 must be a header naming each column once, got {header[:10]!r}"
        )
    width, start = len(names), 2
    try:
        for values in reader:
            if values and len(values) <= width:
                yield start, dict(zip(names, values, strict=False))
            elif values:
                yield start, Unreadable(f"line {start} has {len(values)} values for {width} columns")
            start = reader.line_num + 1
    except csv.Error as err:
        raise BetterTokenInputError(f"table {uri}: line {start} is not CSV: {err}") from None


def _parquet_rows(body: BinaryIO, uri: str) -> Iterator[tuple[int, Mapping[str, Any] | Unreadable]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # not installed, or installed and unable to load
        raise BetterTokenInputError(
            f"table {uri} is Parquet, which needs pyarrow ({err}): install a pyarrow that loads here, or "
            "write JSON Lines or CSV"
        ) from None
    # Parquet's footer is at the end: the file is spooled to disk first, then read a batch at a time.
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(body, spool, _CHUNK)
        spool.seek(0)
        try:
            table = pq.ParquetFile(spool)
        except Exception as err:  # pyarrow raises its own ArrowInvalid and OSError for a bad file
            raise BetterTokenInputError(f"table {uri} is not a Parquet file: {err}") from None
        number = 0
        for batch in table.iter_batches(batch_size=_PARQUET_BATCH):
            for row in batch.to_pylist():
                number += 1
                yield number, row
