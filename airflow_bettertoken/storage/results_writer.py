"""Writing a results table in bounded memory: 100,000 rows hold no more than a few batches at once.

The plan file is streamed a line at a time; the previous ``latest`` table is spooled into a temporary
SQLite file keyed by row key (so a row is looked up, never held); the rows go to a JSON Lines file,
and to a Parquet file in batches when pyarrow is installed; then the files are uploaded: the run's
create-only, and copied over ``latest``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_bettertoken.exceptions import BetterTokenOutputExistsError, BetterTokenRecordError
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.object_lines import object_lines
from airflow_bettertoken.storage.results_table import (
    CARRIED_OVER,
    COLUMNS,
    RESULT_STATES,
    ResultRow,
    RunOutcomes,
    merge_row,
    results_locations,
)
from airflow_bettertoken.storage.s3_io import S3IO
from airflow_bettertoken.storage.table_plan import PlanRow

__all__ = ["TableWritten", "has_parquet", "write_results_table"]

#: Rows per Parquet row group, and per batch of SQLite inserts: a few megabytes each.
BATCH_ROWS = 5000
log = logging.getLogger(__name__)
JSONL = (".jsonl", "application/x-ndjson")
PARQUET = (".parquet", "application/vnd.apache.parquet")


def has_parquet() -> bool:
    """Whether pyarrow is installed, so that the table is also written as Parquet."""
    try:
        import pyarrow.parquet  # noqa: F401
    except ModuleNotFoundError:
        return False
    except ImportError as err:  # installed, but it cannot load: say so rather than drop Parquet unseen
        log.warning("pyarrow cannot be imported (%s): the results table is written as JSON Lines only", err)
        return False
    return True


@dataclass(frozen=True)
class TableWritten:
    """What :func:`write_results_table` wrote: the rows by state, and where."""

    rows: int
    counts: dict[str, int]
    run_uris: tuple[str, ...]
    latest_uris: tuple[str, ...]


class PreviousRows:
    """The previous ``latest`` table, spooled to a SQLite file keyed by row key, read one row at a time."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        # A scratch file: no journal, no syncs.
        self.db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
            "CREATE TABLE previous (key TEXT PRIMARY KEY, line TEXT NOT NULL);"
        )
        self.where = "the previous latest table"

    def spool(self, lines: Iterable[bytes], where: str) -> int:
        """Keep every line by its key (a later line of a key wins); returns how many were kept."""
        self.where = where

        def keyed() -> Iterator[tuple[str, str]]:
            for number, line in enumerate(lines, 1):
                text = line.decode("utf-8")
                try:
                    key = json.loads(text)["key"]
                except (ValueError, KeyError, TypeError):
                    raise BetterTokenRecordError(
                        f"{where} line {number} is no results row (a JSON object with a key); delete it "
                        "to start the table afresh"
                    ) from None
                yield str(key), text

        self.db.executemany("INSERT OR REPLACE INTO previous VALUES (?, ?)", keyed())
        return self.db.execute("SELECT count(*) FROM previous").fetchone()[0]

    def get(self, key: str) -> ResultRow | None:
        found = self.db.execute("SELECT line FROM previous WHERE key = ?", (key,)).fetchone()
        return None if found is None else ResultRow.load(json.loads(found[0]), f"{self.where} row {key!r}")

    def close(self) -> None:
        self.db.close()


class TableFiles:
    """The table's local files: JSON Lines always, Parquet in row groups when pyarrow is there."""

    def __init__(self, folder: Path, parquet: bool) -> None:
        self.jsonl = folder / f"table{JSONL[0]}"
        self.parquet = folder / f"table{PARQUET[0]}" if parquet else None
        self._text = self.jsonl.open("w", encoding="utf-8")
        self._batch: list[dict[str, Any]] = []
        self._writer: Any = None

    def add(self, row: ResultRow) -> None:
        line = row.line()
        self._text.write(json.dumps(line, ensure_ascii=False) + "\n")
        if self.parquet is not None:
            self._batch.append(line)
            if len(self._batch) >= BATCH_ROWS:
                self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            self._writer = pq.ParquetWriter(self.parquet, _schema(pa))
        self._writer.write_table(pa.Table.from_pylist(self._batch, schema=self._writer.schema))
        self._batch = []

    def close(self) -> None:
        self._text.close()
        if self.parquet is not None:
            if self._batch or self._writer is None:  # an empty table is a file with the columns too
                self._flush()
            self._writer.close()


def _schema(pa: Any) -> Any:
    """The Parquet columns: the JSON's, typed. ``cost`` stays a decimal string, exact as in JSON."""
    types = {
        "width": pa.int64(),
        "height": pa.int64(),
        "billed_calls": pa.int64(),
        "size_matches": pa.bool_(),
    }
    return pa.schema([(name, types.get(name, pa.string())) for name in COLUMNS])


def write_results_table(
    io: S3IO,
    plan: Iterable[PlanRow],
    run: RunOutcomes,
    results_prefix: S3Location,
    run_id: str,
    *,
    parquet: bool | None = None,
) -> TableWritten:
    """Write the run's results table, create-only, then make it the ``latest`` table.

    :param plan: the run's plan rows, streamed (:func:`~.table_plan.read_plan`).
    :param run: this run's edits.
    :param results_prefix: ``s3://bucket/prefix/`` of the tables.
    :param parquet: write Parquet too; default: when pyarrow is installed.
    :raises BetterTokenOutputExistsError: when the run's table exists already: a run's table is
        written once.
    """
    formats = [JSONL, PARQUET] if (has_parquet() if parquet is None else parquet) else [JSONL]
    places = [(*results_locations(results_prefix, run_id, suffix), kind) for suffix, kind in formats]
    for run_location, _latest, _kind in places:
        if io.head(run_location).found:
            raise _exists(run_location)
    with tempfile.TemporaryDirectory(prefix="bettertoken-results-") as folder:
        previous = PreviousRows(Path(folder) / "previous.sqlite")
        files = TableFiles(Path(folder), parquet=len(formats) > 1)
        counts: Counter[str] = Counter()
        try:
            latest_jsonl = places[0][1]
            lines = object_lines(io, latest_jsonl, "the previous latest results table")
            if lines is not None:
                previous.spool(lines, latest_jsonl.uri)
            for plan_row in plan:
                earlier = previous.get(plan_row.key) if plan_row.state in CARRIED_OVER else None
                row = merge_row(plan_row, run, earlier)
                counts[row.state] += 1
                files.add(row)
        finally:
            files.close()
            previous.close()
        paths = [files.jsonl, files.parquet][: len(places)]
        for (run_location, _latest, kind), path in zip(places, paths, strict=True):
            if not io.upload_file(str(path), run_location, if_none_match=True, content_type=kind).written:
                raise _exists(run_location)
    for run_location, latest, _kind in places:
        io.copy(run_location, latest, if_none_match=False)
    return TableWritten(
        rows=sum(counts.values()),
        counts={state: counts.get(state, 0) for state in RESULT_STATES},
        run_uris=tuple(p[0].uri for p in places),
        latest_uris=tuple(p[1].uri for p in places),
    )


def _exists(location: S3Location) -> BetterTokenOutputExistsError:
    return BetterTokenOutputExistsError(
        f"The results table {location.uri} exists already: each run's table is written once. To write "
        "it again (the task was cleared), delete it first; the latest table is left as it was"
    )
