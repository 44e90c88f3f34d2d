"""The Airflow plugin: a gallery of edited images under ``/bettertoken``, and an "Edited images" view.

Airflow imports plugins in every component, the DAG processor and the workers included, so this
module stays cheap: the FastAPI app, Pillow and the S3 client load on the gallery's first request.

Airflow 3.1+ shows a plugin's run and task instance tabs on every DAG: an external view can be limited
to a kind of page (``destination``), not to some DAGs. So the pages say plainly when a run has no
edits or no catalog, and an admin can hide each tab: ``[bettertoken] gallery_tab = False`` (the
"Edited images" tabs of runs and task instances) and ``[bettertoken] catalog_tab = False``. The pages
still answer at their URLs.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin
from airflow.providers.common.compat.sdk import conf

from airflow_bettertoken.operators._links import GALLERY_PREFIX

__all__ = ["BetterTokenPlugin"]

RUN_PAGE = GALLERY_PREFIX + "/dags/{DAG_ID}/runs/{RUN_ID}"


class _GalleryApp:
    """An ASGI app that builds the gallery on its first request."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from airflow_bettertoken.plugins._app import create_gallery_app

            self._app = create_gallery_app()
        await self._app(scope, receive, send)


def tabs(gallery_tab: bool, catalog_tab: bool) -> list[dict[str, str]]:
    """The external views (tabs) the settings keep."""
    gallery = [view for view in _VIEWS if view["url_route"] != "bettertoken-catalog"]
    catalog = [view for view in _VIEWS if view["url_route"] == "bettertoken-catalog"]
    return [*(gallery if gallery_tab else []), *(catalog if catalog_tab else [])]


_VIEWS = [
    {
        "name": "Edited images",
        "href": RUN_PAGE,
        "destination": "dag_run",
        "url_route": "bettertoken-run",
    },
    {
        "name": "Catalog progress",
        "href": RUN_PAGE + "/catalog",
        "destination": "dag_run",
        "url_route": "bettertoken-catalog",
    },
    {
        "name": "Edited images",
        "href": RUN_PAGE + "?task_id={TASK_ID}&map_index={MAP_INDEX}",
        "destination": "task_instance",
        "url_route": "bettertoken-task",
    },
]


class BetterTokenPlugin(AirflowPlugin):
    """The gallery app, and its view on DAG run and task instance pages (Airflow 3.1 and later)."""

    name = "bettertoken"
    fastapi_apps = [{"app": _GalleryApp(), "url_prefix": GALLERY_PREFIX, "name": "BetterToken gallery"}]
    # Airflow 3.0 has no external views and ignores these; the pages still answer at their URLs.
    external_views = tabs(
        conf.getboolean("bettertoken", "gallery_tab", fallback=True),
        conf.getboolean("bettertoken", "catalog_tab", fallback=True),
    )
