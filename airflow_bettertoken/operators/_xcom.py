"""Reading other tasks' XCom from an operator."""

from __future__ import annotations

from typing import Any


def materialize(values: Any) -> list[Any]:
    """A mapped task's XComs as a list, read in one request: a slice of Airflow's lazy sequence is
    one call to the execution API, where indexing asks once per map index (and ``len`` once more)."""
    if values is None:
        return []
    return list(values[:])


def task_id_of(value: Any) -> str | None:
    """The task behind an XComArg such as ``list_task.output``; None for a plain value."""
    return getattr(getattr(value, "operator", None), "task_id", None)
