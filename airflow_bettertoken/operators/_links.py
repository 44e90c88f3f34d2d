"""Extra links from an edit task to its row in the gallery, never to the image itself.

A presigned S3 URL would hand read access to whoever holds the link; the gallery checks the
viewer's Airflow rights on every request instead.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from airflow.providers.common.compat.sdk import BaseOperatorLink, conf

#: Where the gallery app is mounted in the API server.
GALLERY_PREFIX = "/bettertoken"


def gallery_url(dag_id: str, run_id: str, task_id: str | None = None, map_index: int | None = None) -> str:
    """The gallery page of a run, or of one task instance of it, under the API server's base path."""
    base_path = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    url = f"{base_path}{GALLERY_PREFIX}/dags/{dag_id}/runs/{quote(run_id, safe='')}"
    if task_id is None:
        return url
    return f"{url}?{urlencode({'task_id': task_id, 'map_index': -1 if map_index is None else map_index})}"


class _GalleryLink(BaseOperatorLink):
    anchor = ""

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        url = gallery_url(ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index)
        return f"{url}#{self.anchor}"


class OutputImageLink(_GalleryLink):
    """The edited image, beside its sources, in the gallery."""

    name = "Output image"
    anchor = "output"


class SourceImagesLink(_GalleryLink):
    """The reference images, beside the output, in the gallery."""

    name = "Source images"
    anchor = "sources"
