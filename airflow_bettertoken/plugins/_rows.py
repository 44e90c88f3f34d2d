"""The gallery's data: the edit task instances of a run and what their XCom recorded, a page at a time."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from airflow_bettertoken.storage.locations import S3Location, parse_s3_uri

EDIT_OPERATOR = "BetterTokenImageEditOperator"
PAGE_SIZE = 50
#: Which image of a task instance: its output, or one of its (at most 16) sources.
WHICH = re.compile(r"^(output|source-(?:[0-9]|1[0-5]))$")


@dataclass(frozen=True)
class EditRow:
    """One edit task instance, with its return value (done or skipped) or its failure record."""

    task_id: str
    map_index: int
    label: str
    state: str
    result: dict[str, Any] | None
    failure: dict[str, Any] | None

    @property
    def status(self) -> str:
        if self.result:
            return "skipped" if self.result.get("skipped") else "done"
        return "failed" if self.state in ("failed", "upstream_failed") or self.failure else self.state

    @property
    def source_uris(self) -> list[str]:
        if self.result:
            return list(self.result.get("source_uris") or [])
        source = (self.failure or {}).get("source")
        return [source] if isinstance(source, str) else list(source or [])

    def image(self, which: str) -> tuple[str | None, S3Location] | None:
        """The S3 object this row recorded for ``which``, with the AWS connection the task used."""
        record = self.result or self.failure or {}
        if which == "output":
            if not self.result or not self.result.get("output_uri"):
                return None
            return record.get("aws_conn_id"), parse_s3_uri(self.result["output_uri"], "output")
        index = int(which.removeprefix("source-"))
        if index >= len(self.source_uris):
            return None
        return record.get("aws_conn_id"), parse_s3_uri(self.source_uris[index], "source")


def _edit_task_instances(dag_id: str, run_id: str, task_id: str | None, map_index: int | None) -> Any:
    query = select(
        TaskInstance.task_id, TaskInstance.map_index, TaskInstance.rendered_map_index, TaskInstance.state
    )
    query = query.where(
        TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.operator == EDIT_OPERATOR
    )
    if task_id is not None:
        query = query.where(TaskInstance.task_id == task_id)
    if map_index is not None:
        query = query.where(TaskInstance.map_index == map_index)
    return query


def edit_rows(
    session: Session,
    dag_id: str,
    run_id: str,
    *,
    task_id: str | None = None,
    map_index: int | None = None,
    page: int = 1,
) -> tuple[int, list[EditRow]]:
    """How many edit task instances the run has (matching the filter), and one page of them."""
    query = _edit_task_instances(dag_id, run_id, task_id, map_index)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page_query = (
        query.order_by(TaskInstance.task_id, TaskInstance.map_index)
        .offset((page - 1) * PAGE_SIZE)
        .limit(PAGE_SIZE)
    )
    return total, _rows(session, dag_id, run_id, session.execute(page_query).all())


def _rows(session: Session, dag_id: str, run_id: str, instances: list[Any]) -> list[EditRow]:
    """The task instances with what their XCom recorded, read in one query."""
    if not instances:
        return []
    xcoms = session.scalars(
        select(XComModel).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.task_id.in_({row.task_id for row in instances}),
            XComModel.map_index.in_({row.map_index for row in instances}),
            XComModel.key.in_(("return_value", "failure")),
        )
    ).all()
    recorded = {(x.task_id, x.map_index, x.key): XComModel.deserialize_value(x) for x in xcoms}
    rows = []
    for instance in instances:
        result = recorded.get((instance.task_id, instance.map_index, "return_value"))
        failure = recorded.get((instance.task_id, instance.map_index, "failure"))
        rows.append(
            EditRow(
                task_id=instance.task_id,
                map_index=instance.map_index,
                label=instance.rendered_map_index
                or (str(instance.map_index) if instance.map_index >= 0 else ""),
                state=str(getattr(instance.state, "value", instance.state) or "none"),
                result=result if isinstance(result, dict) else None,
                failure=failure if isinstance(failure, dict) else None,
            )
        )
    return rows


def find_row(session: Session, dag_id: str, run_id: str, task_id: str, map_index: int) -> EditRow | None:
    """One edit task instance, for an image request: no count, no paging."""
    instances = session.execute(_edit_task_instances(dag_id, run_id, task_id, map_index)).all()
    rows = _rows(session, dag_id, run_id, instances)
    return rows[0] if rows else None
