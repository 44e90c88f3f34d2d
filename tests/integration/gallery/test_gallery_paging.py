"""A run of thousands of edits is shown a page at a time: the query reads one page of rows."""

from __future__ import annotations

from airflow_bettertoken.plugins import _rows
from airflow_bettertoken.plugins._edit_tasks import EditTaskIndex
from tests.integration.gallery.conftest import BACKFILL


def no_s3(aws_conn, location):
    raise AssertionError("a run whose rendered fields are kept needs no S3 request to be listed")


def test_rows_come_a_page_at_a_time_in_map_index_order(runs, monkeypatch):
    from airflow.utils.session import create_session

    monkeypatch.setattr(_rows, "PAGE_SIZE", 3)
    sources = _rows.RowSources(EditTaskIndex(), no_s3)
    with create_session() as session:
        first = _rows.edit_rows(session, sources, BACKFILL, runs[BACKFILL], page=1)
        second = _rows.edit_rows(session, sources, BACKFILL, runs[BACKFILL], page=2)
        beyond = _rows.edit_rows(session, sources, BACKFILL, runs[BACKFILL], page=3)

    assert first[0] == second[0] == beyond[0] == 4  # the total, whatever the page
    assert [row.map_index for row in first[1]] == [0, 1, 2]
    assert [(row.map_index, row.status) for row in second[1]] == [(3, "failed")]
    assert beyond[1] == []
    assert [row.status for row in first[1]] == ["done", "done", "done"]
