"""Reading other tasks' XCom from an operator."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from airflow_bettertoken.protocol.record import Record

R = TypeVar("R", bound=Record)


def materialize(values: Any) -> list[Any]:
    """A mapped task's XComs as a list, read in one request: a slice of Airflow's lazy sequence is
    one call to the execution API, where indexing asks once per map index (and ``len`` once more)."""
    if values is None:
        return []
    return list(values[:])


def task_id_of(value: Any) -> str | None:
    """The task behind an XComArg such as ``list_task.output``; None for a plain value."""
    return getattr(getattr(value, "operator", None), "task_id", None)


def load_records(record_class: type[R], values: Iterable[Any], key: str, task_id: str | None) -> list[R]:
    """The records in a task's XCom values (a mapped task's: one per map index that pushed one).

    :raises BetterTokenRecordError: for a value that is no such record, naming the task and the key.
    """
    where = f"XCom {key!r} of task {task_id or 'the edit task'!r}"
    return [record_class.load(value, where) for value in values if value is not None]
