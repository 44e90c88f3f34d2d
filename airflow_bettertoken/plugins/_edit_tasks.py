"""Which tasks of a DAG version are edits, the AWS connection (and read arguments) their DAG gives them,
the tasks they wait on, and whether the DAG lists a catalog.

Both come from the serialized DAG, which the DAG processor writes from the DAG files and the REST API
cannot change. It is read as JSON, so the API server imports no user code: an edit task is one whose
extra links include the gallery's :class:`OutputImageLink`, which every subclass of the edit operator
inherits. (``TaskInstance.operator`` holds only a class name, so it misses subclasses.)
"""

from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from airflow.models.serialized_dag import SerializedDagModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from airflow_bettertoken.operators._links import OutputImageLink
from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator
from airflow_bettertoken.operators.list_rows import BetterTokenListRowsOperator
from airflow_bettertoken.protocol.templates import is_template
from airflow_bettertoken.storage.s3_extra_args import ReadArgs, read_args_of

#: What a mapped edit uses when its DAG does not pass aws_conn_id to partial().
DEFAULT_AWS_CONN_ID = inspect.signature(BetterTokenImageEditOperator).parameters["aws_conn_id"].default
_MARKER = (OutputImageLink.name, OutputImageLink().xcom_key)
#: The template fields that make a task the planner of a chain, which keeps a chain record: the catalog
#: listing, or a table's row planner (a subclass keeps them).
LISTING_FIELDS = frozenset({"dest_prefix", "replan_failed"})
PLANNERS = (BetterTokenListImagesOperator, BetterTokenListRowsOperator)
# Parsed DAG versions kept; a version's JSON does not change once task instances point at it.
_CACHED_VERSIONS = 64


@dataclass(frozen=True)
class AwsConnection:
    """The AWS connection the gallery reads a row's objects with, and who chose it.

    :param conn_id: the connection id; None is boto3's default credential chain, as in ``S3Hook``.
    :param chosen_by: for the page, e.g. "the DAG" or "the task's rendered fields".
    :param read_args: the read arguments of the task's ``s3_extra_args`` (``RequestPayer``,
        ``ExpectedBucketOwner``), from the same trusted records: every read of the row's objects sends them.
    """

    conn_id: str | None
    chosen_by: str
    read_args: ReadArgs = ()


@dataclass(frozen=True)
class EditTask:
    """An edit task as its DAG defines it.

    :param aws_conn: the connection the DAG gives it; None when the DAG does not say (templated, or
        mapped per task instance), so that only the rendered fields or an admin's setting can.
    :param read_args: the read arguments of the ``s3_extra_args`` the DAG gives it; None when the DAG
        does not say (templated, or mapped per task instance).
    :param mapped: a mapped task: its map index -1 is no edit, only the task before it expanded.
    :param upstream: every task it waits on, directly or not, the nearest first: where to look for
        the reason it did not run.
    """

    task_id: str
    aws_conn: AwsConnection | None
    read_args: ReadArgs | None = ()
    mapped: bool = False
    upstream: tuple[str, ...] = ()


@dataclass(frozen=True)
class DagTasks:
    """What the gallery needs of one DAG version: its edit tasks, and whether it lists a catalog."""

    edits: dict[str, EditTask]
    has_listing: bool = False


_UNSET = object()


def _dag_value(task: Mapping[str, Any], name: str, default: Any) -> Any:
    """The argument ``name`` as a serialized task's DAG fixes it, or ``_UNSET`` when the DAG does not."""
    if task.get("_is_mapped"):
        expand = task.get("expand_input") or {}
        mapped = (
            ((expand.get("value") or {}).get("__var") or {}) if expand.get("type") == "dict-of-lists" else {}
        )
        if name in mapped:
            return _UNSET
        # Only what the DAG passed to partial() is kept; a list of kwargs dicts is taken not to override it.
        value = (task.get("partial_kwargs") or {}).get(name, default)
        if isinstance(value, Mapping) and value.get("__type") == "dict":  # how partial_kwargs keep a dict
            value = value.get("__var")
        return value
    if name in (task.get("template_fields") or ()):
        return task.get(name)  # serialization leaves out a template field that is None
    return _UNSET  # an operator from before the argument was templated: it was not serialized


def dag_connection(task: Mapping[str, Any]) -> AwsConnection | None:
    """The AWS connection a serialized edit task names, if its DAG fixes one."""
    value = _dag_value(task, "aws_conn_id", DEFAULT_AWS_CONN_ID)
    if value is _UNSET or (value is not None and (not isinstance(value, str) or is_template(value))):
        return None
    return AwsConnection(value, "the DAG")


def dag_read_args(task: Mapping[str, Any]) -> ReadArgs | None:
    """The read arguments of the ``s3_extra_args`` a serialized edit task has, if its DAG fixes them."""
    value = _dag_value(task, "s3_extra_args", None)
    return None if value is _UNSET else read_args_of(value)


def _upstream(task_id: str, downstream: Mapping[str, list[str]]) -> tuple[str, ...]:
    """Every task that ``task_id`` waits on, nearest first (breadth first over the reversed edges)."""
    parents: dict[str, list[str]] = {}
    for parent, children in downstream.items():
        for child in children:
            parents.setdefault(child, []).append(parent)
    found: list[str] = []
    level = sorted(parents.get(task_id, []))
    while level:
        found += [t for t in level if t not in found]
        level = sorted({p for t in level for p in parents.get(t, []) if p not in found})
    return tuple(found)


def _tasks(serialized_dag: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [node.get("__var") or {} for node in (serialized_dag.get("dag") or {}).get("tasks") or []]


def edit_tasks_of(serialized_dag: Mapping[str, Any]) -> dict[str, EditTask]:
    """The edit tasks of a serialized DAG (``SerializedDagModel.data``), by task id."""
    all_tasks = _tasks(serialized_dag)
    downstream = {t["task_id"]: list(t.get("downstream_task_ids") or []) for t in all_tasks if "task_id" in t}
    tasks = {}
    for task in all_tasks:
        links = task.get("_operator_extra_links") or {}
        if isinstance(links, Mapping) and links.get(_MARKER[0]) == _MARKER[1]:
            task_id = task["task_id"]
            tasks[task_id] = EditTask(
                task_id,
                dag_connection(task),
                dag_read_args(task),
                mapped=bool(task.get("_is_mapped")),
                upstream=_upstream(task_id, downstream),
            )
    return tasks


def dag_tasks_of(serialized_dag: Mapping[str, Any]) -> DagTasks:
    """The edit tasks of a serialized DAG, and whether one of its tasks is a catalog listing."""
    has_listing = any(
        set(task.get("template_fields") or ()) >= LISTING_FIELDS for task in _tasks(serialized_dag)
    )
    return DagTasks(edit_tasks_of(serialized_dag), has_listing)


class EditTaskIndex:
    """The edit tasks of DAG versions, parsed once per version and kept (thread-safe, bounded)."""

    def __init__(self, max_versions: int = _CACHED_VERSIONS) -> None:
        self.max_versions = max_versions
        self._parsed: OrderedDict[tuple[str, str], DagTasks] = OrderedDict()
        self._lock = threading.Lock()

    def edit_tasks(self, session: Session, version_ids: Collection[Any]) -> dict[Any, dict[str, EditTask]]:
        """The edit tasks of each DAG version, by version id; one small query when all are cached."""
        return {version: tasks.edits for version, tasks in self.dag_tasks(session, version_ids).items()}

    def dag_tasks(self, session: Session, version_ids: Collection[Any]) -> dict[Any, DagTasks]:
        """What the gallery needs of each DAG version, by version id."""
        if not version_ids:
            return {}
        hashes = session.execute(
            select(SerializedDagModel.dag_version_id, SerializedDagModel.dag_hash).where(
                SerializedDagModel.dag_version_id.in_(list(version_ids))
            )
        ).all()
        found = {}
        for version_id, dag_hash in hashes:
            key = (str(version_id), dag_hash)
            with self._lock:
                tasks = self._parsed.get(key)
                if tasks is not None:
                    self._parsed.move_to_end(key)
            if tasks is None:
                model = session.scalar(
                    select(SerializedDagModel).where(SerializedDagModel.dag_version_id == version_id)
                )
                tasks = dag_tasks_of(model.data or {}) if model is not None else DagTasks({})
                with self._lock:
                    self._parsed[key] = tasks
                    while len(self._parsed) > self.max_versions:
                        self._parsed.popitem(last=False)
            found[version_id] = tasks
        return found


# The planners' fields, kept in step with the operators: a renamed one would hide the catalog page.
assert all(set(planner.template_fields) >= LISTING_FIELDS for planner in PLANNERS)
