"""The plan file every run of a table writes: one JSON line per input row, and what became of it.

``_bettertoken/tables/<dag_id>/<run_id>/plan.jsonl`` in the destination bucket. The row planner writes
it; the results table reads it back, a line at a time, and adds what the edits did.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable, Iterator

from airflow_bettertoken.exceptions import BetterTokenRecordError
from airflow_bettertoken.protocol.record import Record, record
from airflow_bettertoken.storage.locations import RESERVED_PREFIX, S3Location
from airflow_bettertoken.storage.object_lines import object_lines
from airflow_bettertoken.storage.s3_io import S3IO, PutResult

__all__ = ["PLAN_STATES", "PlanRow", "read_plan", "table_plan_location", "write_plan"]

#: What the planner decided for a row: ``planned`` (an edit of this run), ``done`` (its output existed),
#: ``bad`` (never paid; ``reason`` says why), ``failed for good`` (in an earlier run of the chain),
#: ``later`` (left for a later run of the chain).
PLAN_STATES = ("planned", "done", "bad", "failed for good", "later")


@record
class PlanRow(Record):
    """One input row of a table, as its run planned it.

    :param key: the row's key (its key column).
    :param line: its place in the input (1 for the first row).
    :param state: one of :data:`PLAN_STATES`.
    :param dest: its output's S3 URI, when the row names one.
    :param reason: why a ``bad`` row is not edited.
    """

    key: str
    line: int
    state: str
    dest: str | None
    prompt: str | None
    size: str | None
    sources: tuple[str, ...] = ()
    reason: str | None = None


def table_plan_location(bucket: str, dag_id: str, run_id: str) -> S3Location:
    """Where a run's plan file is, in the destination bucket."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)
    return S3Location(bucket, f"{RESERVED_PREFIX}tables/{dag_id}/{safe}/plan.jsonl")


def write_plan(io: S3IO, location: S3Location, rows: Iterable[PlanRow]) -> PutResult:
    """Write the plan, streamed to a temporary file, then uploaded create-only.

    :returns: ``written=False`` when the run's plan exists already.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8") as spool:
        for row in rows:
            spool.write(json.dumps(row.dump(), ensure_ascii=False) + "\n")
        spool.flush()
        return io.upload_file(spool.name, location, if_none_match=True)


def read_plan(io: S3IO, location: S3Location) -> Iterator[PlanRow]:
    """The plan's rows in order, streamed.

    :raises BetterTokenRecordError: when the plan is missing, or a line is no plan row.
    """
    lines = object_lines(io, location, "the plan file")
    if lines is None:
        raise BetterTokenRecordError(
            f"No plan file at {location.uri}: the run's row planner did not write one (it failed, or "
            "was not run); its log says why"
        )
    for number, line in enumerate(lines, 1):
        try:
            document = json.loads(line)
        except ValueError as err:
            raise BetterTokenRecordError(f"{location.uri} line {number} is not JSON: {err}") from None
        yield PlanRow.load(document, f"{location.uri} line {number}")
