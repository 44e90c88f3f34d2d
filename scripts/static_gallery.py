"""The gallery as static pages that open from disk: ``make demo`` writes them into ``demo-output/``.

The same renderer as the gallery in the Airflow UI; the images are copied next to the pages. The demo
made these runs itself a moment ago in its own sandbox, so it takes their XCom as the record; the
gallery in the API server never does (see ``airflow_bettertoken/plugins/_trust.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow_bettertoken.plugins._edit_tasks import AwsConnection
from airflow_bettertoken.plugins._html import CSS, render_page
from airflow_bettertoken.plugins._rows import EditRow
from airflow_bettertoken.plugins._trust import Reported, Shown
from airflow_bettertoken.protocol.result import EditXCom
from airflow_bettertoken.storage.locations import S3Location, parse_s3_uri


def _copy(s3: Any, location: S3Location, out_dir: Path, folder: str) -> str:
    """Copy an S3 object to ``out_dir/folder/<bucket>/<key>``; returns its path relative to the page."""
    relative = Path(folder) / location.bucket / location.key
    target = out_dir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(s3.get_object(Bucket=location.bucket, Key=location.key)["Body"].read())
    return relative.as_posix()


def write_page(
    s3: Any, out_dir: Path, page: str, dag_id: str, run_id: str, results: list[dict], prefix: str
) -> Path:
    """One run's before/after page. ``prefix`` is the listed source prefix, cut from the labels."""
    records = [EditXCom.load(result, f"XCom of {dag_id} {run_id}") for result in results]
    rows = [
        EditRow(
            task_id="edit_image",
            map_index=index,
            label=record.source_uris[0].removeprefix(prefix),
            state="success",
            reported=Reported(result=record),
            shown=Shown(
                output=parse_s3_uri(record.output_uri, "output"),
                sources=tuple(parse_s3_uri(uri, "source") for uri in record.source_uris),
                aws_conn=AwsConnection("aws_default", "the demo"),
                checked_against="the demo's own run",
            ),
        )
        for index, record in enumerate(records)
        if record is not None
    ]
    copied: dict[tuple[int, str], str] = {}
    for row in rows:
        copied[(row.map_index, "output")] = _copy(s3, row.shown.output, out_dir, "outputs")
        for index, location in enumerate(row.shown.sources):
            copied[(row.map_index, f"source-{index}")] = _copy(s3, location, out_dir, "sources")
    (out_dir / "gallery.css").write_text(CSS)
    html = render_page(
        dag_id=dag_id,
        run_id=run_id,
        rows=rows,
        total=len(rows),
        page=1,
        pages=1,
        image_url=lambda row, which, size: copied[(row.map_index, which)],
        page_url=lambda number: page,
        css_url="gallery.css",
    )
    target = out_dir / page
    target.write_text(html)
    return target
