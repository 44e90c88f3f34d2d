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
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlencode

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag
from airflow.models.dagrun import DagRun
from airflow.providers.common.compat.sdk import conf
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from airflow_bettertoken.exceptions import BetterTokenError, BetterTokenStorageError
from airflow_bettertoken.plugins._catalog import Catalog, find_catalog, listing_fields
from airflow_bettertoken.plugins._catalog_html import CATALOG_CSS, render_catalog
from airflow_bettertoken.plugins._edit_tasks import AwsConnection, EditTaskIndex
from airflow_bettertoken.plugins._html import CSS, render_page, render_review_page
from airflow_bettertoken.plugins._images import (
    GalleryImages,
    ImageGone,
    ImageTooLarge,
    NotAnImage,
    unavailable,
)
from airflow_bettertoken.plugins._review import (
    CSRF_FIELD,
    FormError,
    FormRow,
    FormTooLarge,
    check_origin,
    csrf_token,
    parse_form,
    read_form,
    valid_csrf_token,
)
from airflow_bettertoken.plugins._rows import (
    PAGE_SIZE,
    WHICH,
    EditRow,
    RowSources,
    dag_tasks_of_run,
    edit_rows,
    find_row,
)
from airflow_bettertoken.protocol.review import Decision, ReviewItem, ReviewRecord
from airflow_bettertoken.protocol.wire import SIZES
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.review import ReviewStore, review_location

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

# Who may submit review decisions: whoever may answer the DAG's human-in-the-loop tasks (Airflow 3.1+),
# or, on 3.0, which has none, whoever may change its task instances.
_WRITE_ENTITY = getattr(DagAccessEntity, "HITL_DETAIL", DagAccessEntity.TASK_INSTANCE)
REVIEW_EDITS = [*READ_EDITS, Depends(requires_access_dag("PUT", _WRITE_ENTITY))]


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

    @app.exception_handler(BetterTokenStorageError)
    def s3_failed(request: Request, err: BetterTokenStorageError) -> Response:
        # Throttling, a 5xx or a refused request: an error to show, never an image "missing".
        answer = " ".join(str(part) for part in (err.status, err.code) if part) or err.botocore_class
        text = f"S3 failed to answer ({answer}); try again"
        return Response(text, status_code=502, media_type="text/plain")

    def row_sources() -> tuple[RowSources, Any]:
        """What one request reads rows with; its HEADs are asked once each, then remembered."""
        head = functools.cache(images.objects.head)

        def head_metadata(aws_conn: AwsConnection, location: S3Location) -> Any:
            found = head(aws_conn.conn_id, location, aws_conn.read_args)
            return found.metadata if found.found else None

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

        def task_url(upstream: str) -> str:
            # Airflow's own page of the task instance, which opens on its log: from .../runs/<run>, up to
            # the API server's root (/bettertoken/dags/<dag>/runs/), then its UI's path.
            return (
                f"../../../../dags/{quote(dag_id, safe='')}/runs/{run_path}/tasks/{quote(upstream, safe='')}"
            )

        has_edit_tasks = bool(total) or any(
            found.edits for found in dag_tasks_of_run(session, edit_tasks, dag_id, run_id).values()
        )

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
            task_url=task_url,
            has_edit_tasks=has_edit_tasks,
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
        has_listing = any(
            found.has_listing for found in dag_tasks_of_run(session, edit_tasks, dag_id, run_id).values()
        )
        catalog = (
            find_catalog(session, images.objects, dag_id, run_id, admin_conn_id())
            if has_listing
            else Catalog(None, None)
        )
        html = render_catalog(
            dag_id=dag_id,
            run_id=run_id,
            catalog=catalog,
            page=page,
            # Relative to .../runs/<run>/catalog: a sibling run's gallery page, this page paged.
            run_url=lambda other: f"../{quote(other, safe='')}",
            page_url=lambda number: f"catalog?{urlencode({'page': number})}",
            css_url="../../../../static/gallery.css",
            has_listing=has_listing,
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
        found = head(aws_conn.conn_id, location, aws_conn.read_args)
        if not found.found:
            raise HTTPException(404, unavailable(found.presence))
        try:
            if size == "full":
                data, content_type = images.full(aws_conn.conn_id, location, found, aws_conn.read_args)
                return Response(data, media_type=content_type)
            thumbnail = images.thumbnail(aws_conn.conn_id, location, found, aws_conn.read_args)
            return Response(thumbnail, media_type="image/jpeg")
        except ImageTooLarge as err:
            raise HTTPException(413, f"the image is too large to show: {err}") from err
        except NotAnImage as err:
            raise HTTPException(415, str(err)) from err
        except ImageGone as err:
            raise HTTPException(404, "the image changed or left S3 since this page was made") from err

    def review_stores(rows: list[EditRow], dag_id: str, run_id: str) -> dict[tuple, ReviewStore]:
        """The run's review record in each bucket its trusted outputs are in, read with their connection."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        stores: dict[tuple, ReviewStore] = {}
        for row in rows:
            shown = row.image("output")
            if shown is None:
                continue
            aws_conn, location = shown
            key = (aws_conn.conn_id, location.bucket)
            if key not in stores:
                location = review_location(location.bucket, dag_id, run_id)
                hook = S3Hook(aws_conn_id=aws_conn.conn_id)
                stores[key] = ReviewStore(hook, location, extra_args=dict(aws_conn.read_args))
        return stores

    def read_records(stores: dict[tuple, ReviewStore]) -> dict[tuple, ReviewRecord | None]:
        try:
            return {key: store.read() for key, store in stores.items()}
        except BetterTokenError as err:
            raise HTTPException(502, f"the review record could not be read: {err}") from err

    def item_of(records: dict[tuple, ReviewRecord | None], row: EditRow) -> ReviewItem | None:
        shown = row.image("output")
        if shown is None:
            return None
        record = records.get((shown[0].conn_id, shown[1].bucket))
        return record.items.get(shown[1].key) if record else None

    def run_rows(session: Any, dag_id: str, run_id: str, page: int) -> list[EditRow]:
        sources, _ = row_sources()
        return edit_rows(session, sources, dag_id, run_id, page=page)[1]

    def review_html(session: Any, user_name: str, dag_id: str, run_id: str, page: int, notice: str) -> str:
        rows = run_rows(session, dag_id, run_id, page)
        records = read_records(review_stores(rows, dag_id, run_id))
        last_round = max((r.max_rounds for r in records.values() if r), default=2)

        def image_url(row: EditRow, which: str, size: str) -> str:
            query = {"task_id": row.task_id, "map_index": row.map_index, "which": which, "size": size}
            return f"image?{urlencode(query)}"  # relative to .../runs/<run>/review

        return render_review_page(
            dag_id=dag_id,
            run_id=run_id,
            rows=rows,
            review_of=lambda row: item_of(records, row),
            csrf_token=csrf_token(user_name, dag_id, run_id),
            sizes=SIZES,
            last_round=last_round,
            notice=notice,
            image_url=image_url,
            css_url="../../../../static/gallery.css",
        )

    @app.get("/dags/{dag_id}/runs/{run_id}/review", dependencies=READ_EDITS, response_class=HTMLResponse)
    def review_page(
        session: SessionDep,
        user: GetUserDep,
        dag_id: str = _id_path(),
        run_id: str = RUN_ID,
        page: int = Query(1, ge=1, le=100_000),
        saved: int | None = Query(None, ge=0, le=10_000),
    ) -> HTMLResponse:
        _check_run(session, dag_id, run_id)
        notice = f"Saved {saved} decisions." if saved is not None else ""
        return HTMLResponse(review_html(session, user.get_name(), dag_id, run_id, page, notice))

    @app.post("/dags/{dag_id}/runs/{run_id}/review", dependencies=REVIEW_EDITS)
    async def submit_review(
        request: Request,
        user: GetUserDep,
        dag_id: str = _id_path(),
        run_id: str = RUN_ID,
    ) -> Response:
        # Everything that can refuse a forged or oversized submit comes before its body is read.
        if not check_origin(request.headers.get("origin"), request.url.scheme, request.headers.get("host")):
            raise HTTPException(403, "cross-site request refused: its Origin is not this server")
        if not valid_csrf_token(request.query_params.get(CSRF_FIELD), user.get_name(), dag_id, run_id):
            raise HTTPException(
                403, "the form's CSRF token is missing, expired or not this user's: reload the page"
            )
        try:
            body = await read_form(request.headers.get("content-length"), request.stream())
            form_rows = parse_form(body)
        except FormTooLarge as err:
            raise HTTPException(413, str(err)) from err
        except FormError as err:
            raise HTTPException(400, str(err)) from err
        # The database and S3 work runs in a thread, as FastAPI runs a plain route.
        from starlette.concurrency import run_in_threadpool

        saved, refused = await run_in_threadpool(save_decisions, user.get_name(), dag_id, run_id, form_rows)
        if not refused:
            return RedirectResponse(f"review?saved={len(saved)}", status_code=303)
        # Some were refused: the page says which were saved and which were not, and why.
        notice = f"Saved {len(saved)} decisions" + (f" ({', '.join(saved)})" if saved else "") + ". "
        reasons = "; ".join(f"{label}: {why}" for label, why in refused.items())
        notice += f"Not saved, {len(refused)}: {reasons}."
        html = await run_in_threadpool(refused_page, user.get_name(), dag_id, run_id, notice)
        return HTMLResponse(html, status_code=200 if saved else 409)

    def refused_page(user_name: str, dag_id: str, run_id: str, notice: str) -> str:
        from airflow.utils.session import create_session

        with create_session() as session:
            return review_html(session, user_name, dag_id, run_id, 1, notice)

    def save_decisions(
        user_name: str, dag_id: str, run_id: str, form_rows: list[FormRow]
    ) -> tuple[list[str], dict[str, str]]:
        """Save each decision that can be; returns the rows saved, and those refused with why (by label)."""
        from airflow.utils.session import create_session

        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        by_store: dict[tuple, dict[str, Decision]] = {}
        labels: dict[tuple, str] = {}
        refused: dict[str, str] = {}
        rows = []
        with create_session() as session:
            _check_run(session, dag_id, run_id)
            sources, _ = row_sources()
            for form_row in form_rows:
                label = f"{form_row.task_id}[{form_row.map_index}]"
                row = find_row(session, sources, dag_id, run_id, form_row.task_id, form_row.map_index)
                shown = row.image("output") if row else None
                if row is None or shown is None:
                    refused[label] = "it has no output the gallery can verify"
                    continue
                label = row.label or label
                try:
                    decision = Decision.checked(
                        form_row.action, user_name, now, prompt=form_row.prompt, size=form_row.size
                    )
                except BetterTokenError as err:
                    refused[label] = str(err)
                    continue
                rows.append(row)
                store_key = (shown[0].conn_id, shown[1].bucket)
                by_store.setdefault(store_key, {})[shown[1].key] = decision
                labels[(store_key, shown[1].key)] = label
        stores = review_stores(rows, dag_id, run_id)
        saved: list[str] = []
        for store_key, decisions in by_store.items():
            store = stores[store_key]
            why: dict[str, str] = {}
            try:
                current = store.read()
                if current is None:
                    why = dict.fromkeys(decisions, "its review is not open: the gate has not started")
                else:
                    store.use_extra_args(current.write_args)

                    def change(
                        record: ReviewRecord | None, decisions=decisions, why=why
                    ) -> ReviewRecord | None:
                        if record is None:
                            return None
                        new, not_saved = record.decide(decisions)
                        why.clear()
                        why.update(not_saved)
                        return new

                    store.update(change)
            except BetterTokenError as err:
                raise HTTPException(502, f"the decisions could not be saved: {err}") from err
            for key in decisions:
                label = labels[(store_key, key)]
                if key in why:
                    refused[label] = why[key]
                else:
                    saved.append(label)
        return saved, refused

    return app
