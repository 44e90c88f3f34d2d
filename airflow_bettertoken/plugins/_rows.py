"""The gallery's data: a run's edit task instances, a page at a time, what their XCom reports, and
which objects each may show (:mod:`._trust` decides, from the rendered fields or the S3 metadata)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from airflow.models.renderedtifields import RenderedTaskInstanceFields
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from sqlalchemy import and_, false, func, not_, or_, select
from sqlalchemy.orm import Session

from airflow_bettertoken.exceptions import BetterTokenRecordError
from airflow_bettertoken.plugins._edit_tasks import AwsConnection, DagTasks, EditTask, EditTaskIndex
from airflow_bettertoken.plugins._trust import HeadMetadata, Reported, Shown, choose_connection, decide
from airflow_bettertoken.protocol.record import Record
from airflow_bettertoken.protocol.result import EditFailure, EditXCom
from airflow_bettertoken.storage.locations import S3Location

R = TypeVar("R", bound=Record)

PAGE_SIZE = 50
#: Which image of a task instance: its output, or one of its (at most 16) sources.
WHICH = re.compile(r"^(output|source-(?:[0-9]|1[0-5]))$")
_XCOM_KEYS = ("return_value", "failure")
# An XCom value that is no edit record is shown as text, this long at most.
_MAX_UNREADABLE_CHARS = 600
# The setting that bounds how many runs keep them was renamed in Airflow 3.3, so the reason names neither.
NO_RENDERED_FIELDS = (
    "Airflow holds no rendered fields for this task instance (it keeps those of a task's latest runs only)"
)


#: Airflow's states of a task instance that has not run (and, with no record, never started).
NOT_RUN_STATES = frozenset({"upstream_failed", "skipped", "removed", "none", "scheduled"})
#: The states of a mapped task's index -1 once it expanded to nothing: no edit at all, so no row.
_EXPANDED_TO_NOTHING = ("skipped", "removed")


@dataclass(frozen=True)
class NotRun:
    """Why an edit did not run: the task it waited on that explains it, with that task's state.

    :param state: the edit's own state.
    :param upstream_task: the nearest task it waits on that failed (or was skipped, or is not done);
        None when none explains it.
    """

    state: str
    upstream_task: str | None = None
    upstream_state: str | None = None

    @property
    def text(self) -> str:
        """One line, e.g. "not run: list_images failed"."""
        task, state = self.upstream_task, self.upstream_state
        if self.state in ("none", "scheduled"):
            return f"not run yet: waiting for {task} ({state})" if task else "not run yet"
        if self.state == "removed":
            return "not run: the task is no longer in the DAG"
        if task and state in ("failed", "upstream_failed"):
            return f"not run: {task} {'failed' if state == 'failed' else 'did not run either'}"
        if task and state == "skipped":
            return f"not run: {task} was skipped"
        return f"not run: {self.state.replace('_', ' ')}"


@dataclass(frozen=True)
class TaskInstanceRef:
    """The identity of one task instance, as the output's S3 metadata records it."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int


@dataclass(frozen=True)
class EditRow:
    """One edit task instance: what its XCom reports, and what the gallery may show of it."""

    task_id: str
    map_index: int
    label: str
    state: str
    reported: Reported
    shown: Shown
    not_run: NotRun | None = None
    #: The prompt the task sent, as Airflow rendered it (a table's row has its own): never from XCom.
    prompt: str | None = None

    @property
    def result(self) -> EditXCom | None:
        return self.reported.result

    @property
    def failure(self) -> EditFailure | None:
        return self.reported.failure

    @property
    def status(self) -> str:
        """Done or skipped as the XCom says, once verified; "not run" with a reason; else Airflow's state."""
        verified = self.shown.reason is None
        if self.not_run is not None:
            return "not run"
        if self.result and verified:
            return "skipped" if self.result.skipped else "done"
        failed = self.state in ("failed", "upstream_failed") or (self.failure and verified)
        return "failed" if failed else self.state

    def image(self, which: str) -> tuple[AwsConnection, S3Location] | None:
        """The object this row may show as ``which``, with the connection to read it: never from XCom."""
        shown = self.shown
        if shown.reason or shown.aws_conn is None:
            return None
        if which == "output":
            return (shown.aws_conn, shown.output) if shown.output else None
        index = int(which.removeprefix("source-"))
        return (shown.aws_conn, shown.sources[index]) if index < len(shown.sources) else None


@dataclass(frozen=True)
class RowSources:
    """Where rows are read from, besides the database session.

    :param head: the S3 metadata of an object, for rows whose rendered fields are gone.
    :param admin_conn_id: ``[bettertoken] gallery_aws_conn_id``: when set, every object is read with it.
    """

    edit_tasks: EditTaskIndex
    head: HeadMetadata
    admin_conn_id: str | None = None


def _instances_query() -> Any:
    return select(
        TaskInstance.task_id,
        TaskInstance.map_index,
        TaskInstance.rendered_map_index,
        TaskInstance.state,
        TaskInstance.dag_version_id,
    )


def dag_tasks_of_run(session: Session, index: EditTaskIndex, dag_id: str, run_id: str) -> dict[Any, DagTasks]:
    """What the gallery needs of the DAG versions the run's task instances belong to, by version id."""
    versions = session.scalars(
        select(TaskInstance.dag_version_id)
        .where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        .distinct()
    ).all()
    return index.dag_tasks(session, [v for v in versions if v is not None])


def _is_edit(version: Any, tasks: Mapping[str, EditTask]) -> Any:
    """The SQL condition for an edit row of this DAG version: a mapped edit's index -1 that expanded
    to nothing is no edit (it never ran and never will)."""
    mapped = [task_id for task_id, task in tasks.items() if task.mapped]
    expanded_to_nothing = and_(
        TaskInstance.map_index == -1,
        TaskInstance.task_id.in_(mapped),
        func.coalesce(TaskInstance.state, "none").in_(_EXPANDED_TO_NOTHING),
    )
    return and_(
        TaskInstance.dag_version_id == version,
        TaskInstance.task_id.in_(list(tasks)),
        not_(expanded_to_nothing) if mapped else True,
    )


def edit_rows(
    session: Session,
    sources: RowSources,
    dag_id: str,
    run_id: str,
    *,
    task_id: str | None = None,
    map_index: int | None = None,
    page: int = 1,
) -> tuple[int, list[EditRow]]:
    """How many edit task instances the run has (matching the filter), and one page of them."""
    dag_tasks = dag_tasks_of_run(session, sources.edit_tasks, dag_id, run_id)
    tasks = {version: found.edits for version, found in dag_tasks.items()}
    is_edit = [_is_edit(version, by_id) for version, by_id in tasks.items() if by_id]
    query = _instances_query().where(
        TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, or_(*is_edit) if is_edit else false()
    )
    if task_id is not None:
        query = query.where(TaskInstance.task_id == task_id)
    if map_index is not None:
        query = query.where(TaskInstance.map_index == map_index)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page_query = (
        query.order_by(TaskInstance.task_id, TaskInstance.map_index)
        .offset((page - 1) * PAGE_SIZE)
        .limit(PAGE_SIZE)
    )
    instances = session.execute(page_query).all()
    return total, _rows(session, sources, dag_id, run_id, instances, tasks)


def find_row(
    session: Session, sources: RowSources, dag_id: str, run_id: str, task_id: str, map_index: int
) -> EditRow | None:
    """One edit task instance, for an image request: no count, no paging."""
    instance = session.execute(
        _instances_query().where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == run_id,
            TaskInstance.task_id == task_id,
            TaskInstance.map_index == map_index,
        )
    ).first()
    if instance is None or instance.dag_version_id is None:
        return None
    tasks = sources.edit_tasks.edit_tasks(session, [instance.dag_version_id])
    task = tasks.get(instance.dag_version_id, {}).get(task_id)
    if task is None or (task.mapped and map_index == -1 and instance.state in _EXPANDED_TO_NOTHING):
        return None
    return _rows(session, sources, dag_id, run_id, [instance], tasks)[0]


def _recorded(session: Session, dag_id: str, run_id: str, instances: list[Any]) -> tuple[dict, dict]:
    """The XCom values and the rendered fields of the task instances, in one query each."""
    task_ids, map_indexes = {i.task_id for i in instances}, {i.map_index for i in instances}
    xcoms = session.scalars(
        select(XComModel).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.task_id.in_(task_ids),
            XComModel.map_index.in_(map_indexes),
            XComModel.key.in_(_XCOM_KEYS),
        )
    ).all()
    values = {(x.task_id, x.map_index, x.key): XComModel.deserialize_value(x) for x in xcoms}
    rtif = RenderedTaskInstanceFields
    rendered = session.execute(
        select(rtif.task_id, rtif.map_index, rtif.rendered_fields).where(
            rtif.dag_id == dag_id,
            rtif.run_id == run_id,
            rtif.task_id.in_(task_ids),
            rtif.map_index.in_(map_indexes),
        )
    ).all()
    return values, {(r.task_id, r.map_index): r.rendered_fields for r in rendered}


def _record_or_none(record_class: type[R], value: Any) -> R | None:
    """The record in an XCom value; None when there is none, or the value is no such record (XCom can
    be written through the REST API: the row names the value as unreadable, and shows it as text)."""
    if value is None:
        return None
    try:
        return record_class.load(value, "XCom")
    except BetterTokenRecordError:
        return None


def _reported(values: Mapping[tuple[str, int, str], Any], task_id: str, map_index: int) -> Reported:
    """What the XCom reports; a value that is there but is no edit record is named, not dropped."""
    raw = {
        key: values[(task_id, map_index, key)] for key in _XCOM_KEYS if (task_id, map_index, key) in values
    }
    result = _record_or_none(EditXCom, raw.get("return_value"))
    failure = _record_or_none(EditFailure, raw.get("failure"))
    unreadable = [
        key
        for key, record in zip(_XCOM_KEYS, (result, failure), strict=True)
        if key in raw and record is None
    ]
    if not unreadable:
        return Reported(result, failure)
    text = json.dumps(raw[unreadable[0]], default=str)
    cut = text if len(text) <= _MAX_UNREADABLE_CHARS else text[:_MAX_UNREADABLE_CHARS] + "..."
    return Reported(result, failure, unreadable[0], cut)


def _rows(
    session: Session,
    sources: RowSources,
    dag_id: str,
    run_id: str,
    instances: list[Any],
    tasks: Mapping[Any, Mapping[str, EditTask]],
) -> list[EditRow]:
    if not instances:
        return []
    values, rendered_fields = _recorded(session, dag_id, run_id, instances)
    states = _upstream_states(session, dag_id, run_id, instances, tasks)
    rows = []
    for instance in instances:
        key = (instance.task_id, instance.map_index)
        rendered = rendered_fields.get(key)
        rendered = rendered if isinstance(rendered, Mapping) else None
        reported = _reported(values, *key)
        aws_conn = choose_connection(
            sources.admin_conn_id, rendered, tasks[instance.dag_version_id][instance.task_id]
        )
        ti = TaskInstanceRef(dag_id, run_id, *key)
        state = _state(instance.state)
        shown = decide(ti, reported, rendered, aws_conn, sources.head, no_rendered_fields=NO_RENDERED_FIELDS)
        task = tasks[instance.dag_version_id][instance.task_id]
        rows.append(
            EditRow(
                task_id=instance.task_id,
                map_index=instance.map_index,
                label=_label(instance, shown),
                state=state,
                reported=reported,
                shown=shown,
                not_run=_not_run(state, shown, task, states),
                prompt=_prompt(rendered),
            )
        )
    return rows


def _prompt(rendered: Mapping[str, Any] | None) -> str | None:
    prompt = (rendered or {}).get("prompt")
    return prompt if isinstance(prompt, str) and prompt else None


def _state(state: Any) -> str:
    return str(getattr(state, "value", state) or "none")


def _label(instance: Any, shown: Shown) -> str:
    """A mapped edit's rendered map index (its image's path); an unmapped edit's source's name."""
    if instance.map_index >= 0:
        return instance.rendered_map_index or str(instance.map_index)
    if shown.sources:
        name = shown.sources[0].key.rsplit("/", 1)[-1]
        return name + (f" and {len(shown.sources) - 1} more" if len(shown.sources) > 1 else "")
    return ""


# The order in which an upstream state explains an edit that did not run: a failure first.
_EXPLAINS = ("failed", "upstream_failed", "skipped")


def _upstream_states(
    session: Session,
    dag_id: str,
    run_id: str,
    instances: list[Any],
    tasks: Mapping[Any, Mapping[str, EditTask]],
) -> dict[str, str]:
    """The state of every task the not-run edits wait on, in one query; for a mapped task, its worst."""
    upstream = {
        name
        for i in instances
        if _state(i.state) in NOT_RUN_STATES
        for name in tasks[i.dag_version_id][i.task_id].upstream
    }
    if not upstream:
        return {}
    found = session.execute(
        select(TaskInstance.task_id, TaskInstance.state).where(
            TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id.in_(upstream)
        )
    ).all()
    states: dict[str, str] = {}
    for task_id, state in found:
        state, before = _state(state), states.get(task_id)
        rank = _EXPLAINS.index(state) if state in _EXPLAINS else len(_EXPLAINS)
        if before is None or rank < (_EXPLAINS.index(before) if before in _EXPLAINS else len(_EXPLAINS)):
            states[task_id] = state
    return states


def _not_run(state: str, shown: Shown, task: EditTask, states: Mapping[str, str]) -> NotRun | None:
    """Why an edit did not run, from the tasks it waits on; None when it ran.

    Airflow's state decides, not XCom (anyone with XCom rights can write one); only a verified output
    tells of an earlier try, e.g. of a task cleared to run again.
    """
    if state not in NOT_RUN_STATES or shown.output is not None:
        return None
    if state in ("none", "scheduled"):
        waiting = [t for t in task.upstream if states.get(t, "none") not in ("success", "skipped")]
        # The farthest task not done yet is the one that is running or next; nearer ones wait on it.
        return NotRun(state, waiting[-1], states.get(waiting[-1], "none")) if waiting else NotRun(state)
    for wanted in _EXPLAINS:
        for upstream in task.upstream:  # nearest first
            if states.get(upstream) == wanted:
                return NotRun(state, upstream, wanted)
    return NotRun(state)
