"""Reading other tasks' XCom from an operator."""

from __future__ import annotations

from typing import Any


def materialize(values: Any) -> list[Any]:
    """A mapped task's XComs as a list. Indexing up to ``len`` asks for each value once; plain
    iteration would probe one offset past the end and log a spurious 'XCom not found'."""
    if values is None:
        return []
    return [values[index] for index in range(len(values))]


def task_id_of(value: Any) -> str | None:
    """The task behind an XComArg such as ``list_task.output``; None for a plain value."""
    return getattr(getattr(value, "operator", None), "task_id", None)
