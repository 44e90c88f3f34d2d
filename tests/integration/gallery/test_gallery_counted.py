"""A run edited by a subclass of the edit operator, through a connection whose S3 requests are
counted: the gallery lists the subclass's edits, and a second view of its 50 thumbnails makes no GET."""

from __future__ import annotations

import re
from collections import Counter
from html import unescape
from urllib.parse import quote

import requests
from sqlalchemy import select

from tests.integration.gallery.conftest import COUNTED, COUNTED_IMAGES


def run_url(server) -> str:
    return f"{server.url}/bettertoken/dags/{COUNTED}/runs/"


def page(server, run_id) -> str:
    headers = {"Authorization": f"Bearer {server.token('viewer')}"}
    return requests.get(run_url(server) + quote(run_id, safe=""), headers=headers, timeout=60).text


def view(server, run_id, s3_requests) -> dict:
    """One view of the run's page, as a browser makes it: the page, then each thumbnail on it."""
    headers = {"Authorization": f"Bearer {server.token('viewer')}"}
    s3_requests.clear()
    html = page(server, run_id)
    page_requests = len(s3_requests)
    thumbnails = [unescape(src) for src in re.findall(r'<img src="([^"]*)"', html)]
    answers = [requests.get(run_url(server) + src, headers=headers, timeout=60) for src in thumbnails]
    assert [answer.headers["content-type"] for answer in answers] == ["image/jpeg"] * len(answers)
    return {
        "thumbnails": len(thumbnails),
        "page": page_requests,
        "images": dict(Counter(method for method, _ in s3_requests)),
    }


def test_the_edits_of_a_subclass_are_listed(server, counted_run):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        operators = set(
            session.scalars(select(TaskInstance.operator).where(TaskInstance.run_id == counted_run)).all()
        )
    html = page(server, counted_run)  # the page only: its thumbnails are counted by the next test
    listed = re.findall(r'<span class="meta">(\w+)(?:\[(\d+)\])?</span>', html)
    labels = re.findall(r"<h2>(.*?)</h2>", html)
    rows = html.split('<section class="legend">')[0]

    assert operators == {"BetterTokenListImagesOperator", "CatalogImageEdit"}  # not the edit operator's name
    # The unmapped edit is its task alone, named after its source; the mapped ones by their index.
    assert listed == [("edit_cover", "")] + [("edit_image", str(i)) for i in range(COUNTED_IMAGES)]
    assert labels[0] == "cover.png"
    assert rows.count("status-done") == COUNTED_IMAGES + 1 and "not verified" not in rows


def test_a_second_view_of_a_page_of_50_thumbnails_makes_no_get(server, counted_run, counted_s3):
    first = view(server, counted_run, counted_s3.requests)
    second = view(server, counted_run, counted_s3.requests)
    print(
        f"\nS3 requests for a page of {first['thumbnails']} thumbnails: first view {first['images']} "
        f"(the page itself {first['page']}), second view {second['images']} (the page {second['page']})"
    )

    assert first["thumbnails"] == second["thumbnails"] == 50
    # The page reads no S3: the rendered fields decide what each row may show.
    assert first["page"] == second["page"] == 0
    # Each thumbnail: a HEAD (the size, the ETag), then a GET only when the cache has no thumbnail of it.
    assert first["images"] == {"HEAD": 50, "GET": 50}
    assert second["images"] == {"HEAD": 50}


def one_thumbnail(server, run_id) -> str:
    return unescape(re.findall(r'<img src="([^"]*)"', page(server, run_id))[0])


def test_a_throttled_s3_is_an_error_on_the_image_never_a_missing_one(server, counted_run, counted_s3):
    headers = {"Authorization": f"Bearer {server.token('viewer')}"}
    thumbnail = one_thumbnail(server, counted_run)
    counted_s3.fail_reads = -1  # every HEAD and GET: SlowDown, through botocore's own retries
    try:
        answer = requests.get(run_url(server) + thumbnail, headers=headers, timeout=60)
    finally:
        counted_s3.fail_reads = 0

    assert answer.status_code == 502
    assert "S3 failed to answer (503" in answer.text and "no longer in S3" not in answer.text
    assert requests.get(run_url(server) + thumbnail, headers=headers, timeout=60).status_code == 200


def test_a_403_on_the_image_says_so_never_that_it_is_missing(server, counted_run, counted_s3):
    headers = {"Authorization": f"Bearer {server.token('viewer')}"}
    thumbnail = one_thumbnail(server, counted_run)
    counted_s3.requester_pays = True  # the gallery's reads carry no x-amz-request-payer: AWS answers 403
    try:
        answer = requests.get(run_url(server) + thumbnail, headers=headers, timeout=60)
    finally:
        counted_s3.requester_pays = False

    assert answer.status_code == 404
    assert "S3 answered 403" in answer.json()["detail"] and "no longer in S3" not in answer.text
