"""Names and links on the edit tasks: the grid shows the source's name, and both extra links open the
task's row in the gallery (not a presigned URL)."""

from __future__ import annotations

from urllib.parse import quote

import requests
from sqlalchemy import select

from tests.integration.gallery.conftest import BACKFILL, SCHEDULED


def task_instances(dag_id: str, run_id: str) -> dict[int, str | None]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.map_index, TaskInstance.rendered_map_index).where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == "edit_image",
            )
        ).all()
    return dict(rows)


def stored_links(dag_id: str, run_id: str, map_index: int) -> dict[str, str]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == "edit_image",
                XComModel.map_index == map_index,
                XComModel.key.like("_link_%"),
            )
        ).all()
        return {row.key: XComModel.deserialize_value(row) for row in rows}


def test_mapped_edits_are_named_after_their_source(runs):
    assert task_instances(BACKFILL, runs[BACKFILL]) == {
        0: "garden/tools/rake.png",
        1: "lamp.webp",
        2: "mug.jpg",
        3: "notes.png",
    }
    assert task_instances(SCHEDULED, runs[SCHEDULED]) == {0: "cup.png"}


def test_both_extra_links_open_the_tasks_row_in_the_gallery(runs, server):
    links = stored_links(BACKFILL, runs[BACKFILL], 2)
    assert sorted(links) == ["_link_OutputImageLink", "_link_SourceImagesLink"]
    assert links["_link_OutputImageLink"].endswith("?task_id=edit_image&map_index=2#output")
    assert links["_link_SourceImagesLink"].endswith("?task_id=edit_image&map_index=2#sources")
    for link in links.values():
        assert link.startswith(f"/bettertoken/dags/{BACKFILL}/runs/{quote(runs[BACKFILL], safe='')}?")
        assert "X-Amz" not in link and "s3" not in link.split("?")[0]  # never a presigned URL
        page = requests.get(
            server.url + link.split("#")[0],
            headers={"Authorization": f"Bearer {server.token('viewer')}"},
            timeout=60,
        )
        assert page.status_code == 200
        assert page.text.count('<article class="edit">') == 1 and "<h2>mug.jpg</h2>" in page.text
        assert 'id="output"' in page.text and 'id="sources"' in page.text
