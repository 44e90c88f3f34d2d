"""XCom forged through a real API server's REST API never makes the gallery read what it names.

An admin PATCHed and POSTed edit records (see the ``forged`` fixture) that name a secret text and a
secret image in another bucket, and another AWS connection. Every image link of the page, thumbnail
and full, and every image the routes could be asked for, is checked against those secrets' bytes.
"""

from __future__ import annotations

import io
import re
from html import escape, unescape
from urllib.parse import quote

import pytest
import requests
from PIL import Image, UnidentifiedImageError

from tests.integration.gallery.conftest import BACKFILL, SECRET_SIZE, SECRET_TEXT, secret_png
from tests.integration.gallery.server import ApiServer

WHICH = ["output", "source-0", "source-1"]


def get(server: ApiServer, path: str, user: str | None, **params) -> requests.Response:
    headers = {"Authorization": f"Bearer {server.token(user)}"} if user else {}
    url = f"{server.url}/bettertoken/dags/{BACKFILL}/runs/{path}"
    return requests.get(url, params=params, headers=headers, timeout=60)


def page(server: ApiServer, run_id: str, user: str | None = "viewer") -> requests.Response:
    return get(server, quote(run_id, safe=""), user)


def image(server, run_id, map_index, which, size, user="viewer") -> requests.Response:
    path = quote(run_id, safe="") + "/image"
    return get(server, path, user, task_id="edit_image", map_index=map_index, which=which, size=size)


def shows_a_secret(answer: requests.Response) -> bool:
    """Whether an answer holds the secret text, the secret image, or a thumbnail of it."""
    body = answer.content
    if SECRET_TEXT in body or body == secret_png():
        return True
    try:
        with Image.open(io.BytesIO(body)) as decoded:
            return decoded.size == SECRET_SIZE
    except UnidentifiedImageError:
        return False


def image_links(html: str) -> list[str]:
    return [unescape(link) for link in re.findall(r'(?:src|href)="([^"]*/image\?[^"]*)"', html)]


def rows(html: str) -> dict[int, str]:
    """Each row's HTML by its map index."""
    articles = re.findall(r'<article class="edit">(.*?)</article>', html)
    # A mapped edit's meta names its map index; the task before it expanded is the task alone (-1).
    indexes = [re.search(r'class="meta">edit_image(?:\[(\d+)\])?<', article) for article in articles]
    return {int(found.group(1) or -1): article for found, article in zip(indexes, articles, strict=True)}


def test_no_image_link_of_the_page_serves_what_forged_xcom_names(server, forged):
    run_path = f"{server.url}/bettertoken/dags/{BACKFILL}/runs/"
    headers = {"Authorization": f"Bearer {server.token('viewer')}"}
    links = []
    for run_id in (forged["run"], forged["empty_run"]):
        html = page(server, run_id).text
        links += [run_path + link for link in image_links(html)]
    answers = [requests.get(link, headers=headers, timeout=60) for link in links]

    assert not [answer.url for answer in answers if shows_a_secret(answer)]
    assert len(links) == 4  # lamp.png's own: its source and output, thumbnail and full
    assert all("map_index=0" in link for link in links), links
    assert [answer.status_code for answer in answers] == [200] * 4


@pytest.mark.parametrize("size", ["thumb", "full"])
@pytest.mark.parametrize("which", WHICH)
def test_no_image_of_a_forged_row_is_served(server, forged, which, size):
    for run_id, map_index in forged["forged_rows"]:
        answer = image(server, run_id, map_index, which, size)
        assert answer.status_code == 404, (run_id, map_index, answer.status_code)
        assert not shows_a_secret(answer)


def test_a_forged_row_shows_its_xcom_as_text_and_why(server, forged):
    html = page(server, forged["run"]).text
    by_index = rows(html)

    assert sorted(by_index) == [0, 1, 2]
    assert "<img" in by_index[0] and "checked against the task&#x27;s rendered source and dest" in by_index[0]
    # Their status is Airflow's task state, not the "done" that the forged record claims.
    assert 'status-other">success' in by_index[1] and 'status-failed">failed' in by_index[2]
    for index in (1, 2):
        assert "<img" not in by_index[index] and "/image?" not in by_index[index]
        assert (
            "not verified: its XCom" in by_index[index]
            and escape(forged["patched_reason"]) in by_index[index]
        )
        assert forged["secret_image"] in by_index[index]  # as text: what the XCom says
    empty = rows(page(server, forged["empty_run"]).text)
    assert list(empty) == [-1] and "/image?" not in empty[-1]
    assert "not verified: Airflow holds no rendered fields" in empty[-1]
    # Airflow's state decides, not the forged record: the listing failed, so the edit never ran.
    assert 'status-not-run">not run' in empty[-1] and "not run: list_images failed" in empty[-1]


def test_anonymous_and_wrong_dag_users_are_still_refused(server, forged):
    run_id = forged["run"]
    assert page(server, run_id, None).status_code == 401
    assert image(server, run_id, 0, "output", "full", None).status_code == 401
    assert page(server, run_id, "alice").status_code == 403  # alice may read another DAG only
    assert image(server, run_id, 0, "output", "full", "alice").status_code == 403
