"""The gallery's FastAPI app, mounted by Airflow's API server under ``/bettertoken``.

A plugin app is not behind Airflow's auth by itself: every route here declares Airflow's own access
checks. The pages and images of a DAG need the right to read its task instances and its XCom. An
image is named by DAG, run, task, map index and which image, never by S3 address; the object read is
the one the task's rendered fields or its output's S3 metadata name (:mod:`._trust`), with a connection
that XCom does not choose, so editing XCom through the REST API cannot make the app read another one.
"""

from __future__ import annotations

import functools
import math
from typing import Any
from urllib.parse import quote, urlencode

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.models.dagrun import DagRun
from airflow.providers.common.compat.sdk import conf
from botocore.exceptions import ClientError
from fastapi import Depends, FastAPI, HTTPException, Path, Query
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from airflow_bettertoken.plugins._catalog import find_catalog, listing_fields
from airflow_bettertoken.plugins._catalog_html import CATALOG_CSS, render_catalog
from airflow_bettertoken.plugins._edit_tasks import AwsConnection, EditTaskIndex
from airflow_bettertoken.plugins._html import CSS, render_page
from airflow_bettertoken.plugins._images import GalleryImages, ImageTooLarge, NotAnImage
from airflow_bettertoken.plugins._rows import PAGE_SIZE, WHICH, EditRow, RowSources, edit_rows, find_row
from airflow_bettertoken.storage.locations import S3Location

# Airflow's own rule for DAG and task ids: letters, digits, '_', '-' and '.'.
ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,250}$"
HEADERS = {
    # No script at all, and nothing from elsewhere: the UI must work offline.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'none'; object-src 'none'; frame-ancestors 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, no-store",
    "Referrer-Policy": "same-origin",
}
READ_EDITS = [
    Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE)),
    Depends(requires_access_dag("GET", DagAccessEntity.XCOM)),
]


class _SecurityHeaders:
    """ASGI middleware: the same headers on every answer, errors included."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                extra = [
                    (k.lower().encode(), v.encode())
                    for k, v in HEADERS.items()
                    if k.lower().encode() not in names
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _authenticated(user: GetUserDep) -> None:
    """Any signed-in user: the stylesheet holds nothing private, but no route is left open."""


def _id_path() -> Any:
    return Path(pattern=ID_PATTERN)


RUN_ID = Path(min_length=1, max_length=250)


def _check_run(session: Any, dag_id: str, run_id: str) -> None:
    found = session.scalar(select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if found is None:
        raise HTTPException(404, "no such DAG run")


def create_gallery_app() -> FastAPI:
    app = FastAPI(title="BetterToken gallery", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_SecurityHeaders)
    images = GalleryImages()
    edit_tasks = EditTaskIndex()

    def row_sources() -> tuple[RowSources, Any]:
        """What one request reads rows with; its HEADs are asked once each, then remembered."""
        head = functools.cache(images.objects.head)

        def head_metadata(aws_conn: AwsConnection, location: S3Location) -> Any:
            found = head(aws_conn.conn_id, location)
            return found.metadata if found else None

        return RowSources(edit_tasks, head_metadata, admin_conn_id()), head

    def admin_conn_id() -> str | None:
        return conf.get("bettertoken", "gallery_aws_conn_id", fallback="") or None

    @app.get("/static/gallery.css", dependencies=[Depends(_authenticated)])
    def stylesheet() -> Response:
        return Response(CSS + CATALOG_CSS, media_type="text/css")

    # The run id is a path segment, not a query value: Airflow 3.1's UI fills {RUN_ID} in unencoded,
    # and in a query the '+' of a run id would arrive as a space.
    @app.get("/dags/{dag_id}/runs/{run_id}", dependencies=READ_EDITS, response_class=HTMLResponse)
    def run_page(
        session: SessionDep,
        dag_id: str = _id_path(),
        run_id: str = RUN_ID,
        task_id: str | None = Query(None, pattern=ID_PATTERN),
        map_index: int | None = Query(None, ge=-1),
        page: int = Query(1, ge=1, le=100_000),
    ) -> HTMLResponse:
        _check_run(session, dag_id, run_id)
        sources, _ = row_sources()
        total, rows = edit_rows(
            session, sources, dag_id, run_id, task_id=task_id, map_index=map_index, page=page
        )

        # Relative URLs: the API server may sit under a base path.
        run_path = quote(run_id, safe="")

        def image_url(row: EditRow, which: str, size: str) -> str:
            query = {"task_id": row.task_id, "map_index": row.map_index, "which": which, "size": size}
            return f"{run_path}/image?{urlencode(query)}"

        def page_url(number: int) -> str:
            query: dict[str, Any] = {"page": number}
            if task_id is not None:
                query.update(task_id=task_id, map_index=map_index if map_index is not None else -1)
            return f"{run_path}?{urlencode(query)}"

        html = render_page(
            dag_id=dag_id,
            run_id=run_id,
            rows=rows,
            total=total,
            page=page,
            pages=max(1, math.ceil(total / PAGE_SIZE)),
            image_url=image_url,
            page_url=page_url,
            css_url="../../../static/gallery.css",
            catalog_url=f"{run_path}/catalog" if listing_fields(session, dag_id, run_id) else None,
        )
        return HTMLResponse(html)

    @app.get("/dags/{dag_id}/runs/{run_id}/catalog", dependencies=READ_EDITS, response_class=HTMLResponse)
    def catalog_page(
        session: SessionDep,
        dag_id: str = _id_path(),
        run_id: str = RUN_ID,
        page: int = Query(1, ge=1, le=100_000),
    ) -> HTMLResponse:
        _check_run(session, dag_id, run_id)
        catalog = find_catalog(session, images.objects, dag_id, run_id, admin_conn_id())
        html = render_catalog(
            dag_id=dag_id,
            run_id=run_id,
            catalog=catalog,
            page=page,
            # Relative to .../runs/<run>/catalog: a sibling run's gallery page, this page paged.
            run_url=lambda other: f"../{quote(other, safe='')}",
            page_url=lambda number: f"catalog?{urlencode({'page': number})}",
            css_url="../../../../static/gallery.css",
        )
        return HTMLResponse(html)

    @app.get("/dags/{dag_id}/runs/{run_id}/image", dependencies=READ_EDITS)
    def image(
        session: SessionDep,
        dag_id: str = _id_path(),
        run_id: str = RUN_ID,
        task_id: str = Query(pattern=ID_PATTERN),
        map_index: int = Query(ge=-1),
        which: str = Query(pattern=WHICH.pattern),
        size: str = Query("thumb", pattern="^(thumb|full)$"),
    ) -> Response:
        sources, head = row_sources()
        row = find_row(session, sources, dag_id, run_id, task_id, map_index)
        shown = row.image(which) if row else None
        if shown is None:
            raise HTTPException(404, "this task instance has no such image that the gallery can verify")
        aws_conn, location = shown
        found = head(aws_conn.conn_id, location)
        if found is None:
            raise HTTPException(404, "the image is no longer in S3")
        try:
            if size == "full":
                data, content_type = images.full(aws_conn.conn_id, location, found)
                return Response(data, media_type=content_type)
            thumbnail = images.thumbnail(aws_conn.conn_id, location, found)
            return Response(thumbnail, media_type="image/jpeg")
        except ImageTooLarge as err:
            raise HTTPException(413, f"the image is too large to show: {err}") from err
        except NotAnImage as err:
            raise HTTPException(415, str(err)) from err
        except ClientError as err:
            raise HTTPException(404, "the image changed or left S3 since this page was made") from err

    return app
