"""The gallery's routes in a real API server: who may see what, and what can never be asked for."""

from __future__ import annotations

import io
import re
from urllib.parse import quote

import pytest
import requests
from PIL import Image

from tests.integration.gallery.conftest import BACKFILL, SCHEDULED
from tests.integration.gallery.server import ApiServer


def get(server: ApiServer, path: str, user: str | None = None, **params) -> requests.Response:
    headers = {"Authorization": f"Bearer {server.token(user)}"} if user else {}
    return requests.get(f"{server.url}/bettertoken{path}", params=params, headers=headers, timeout=60)


def run_path(dag_id: str, run_id: str) -> str:
    return f"/dags/{dag_id}/runs/{quote(run_id, safe='')}"


def image(
    server, runs, user, map_index: int, which: str = "output", size: str = "thumb", task_id="edit_image"
):
    path = run_path(BACKFILL, runs[BACKFILL]) + "/image"
    return get(server, path, user, task_id=task_id, map_index=map_index, which=which, size=size)


def test_anonymous_requests_are_refused_on_every_route(server, runs):
    answers = [
        get(server, run_path(BACKFILL, runs[BACKFILL])),
        image(server, runs, None, 0),
        get(server, "/static/gallery.css"),
    ]
    assert [answer.status_code for answer in answers] == [401, 401, 401]


def test_a_permitted_user_sees_the_run_with_sizes_statuses_and_safe_headers(server, runs):
    page = get(server, run_path(BACKFILL, runs[BACKFILL]), "viewer")

    assert page.status_code == 200, page.text[-500:]
    html = page.text.split('<section class="legend">')[0]  # the rows; the legend shows every badge once
    labels = re.findall(r"<h2>(.*?)</h2>", html)
    assert labels == ["garden/tools/rake.png", "lamp.webp", "mug.jpg", "notes.png"]
    assert html.count('class="badge-mismatch"') == 3  # 1000x1000 where 1024x1024 was asked for
    assert html.count("status-done") == 3 and html.count("status-failed") == 1
    assert "BetterTokenInputError" in html and "not PNG, JPEG or WEBP" in html
    # Each row shows the prompt its task sent, as Airflow rendered it from the DAG's Param.
    prompt = '<dt>prompt</dt><dd><span class="prompt">Put the product on a plain white background</span>'
    assert html.count(prompt) == 4
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cache-Control"].startswith("private")
    assert "http://" not in html and "https://" not in html  # no CDN, no other host


@pytest.mark.parametrize(
    ("which", "size", "kind"),
    [("output", "thumb", "JPEG"), ("output", "full", "PNG"), ("source-0", "full", None)],
)
def test_a_permitted_user_gets_the_real_images(server, runs, which, size, kind):
    answer = image(server, runs, "viewer", 0, which, size)

    assert answer.status_code == 200
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    with Image.open(io.BytesIO(answer.content)) as decoded:
        assert kind is None or decoded.format == kind
        assert max(decoded.size) <= (512 if size == "thumb" else 4096)
        if which == "output" and size == "full":
            assert decoded.size == (1000, 1000)


@pytest.mark.parametrize("size", ["thumb", "full"])
def test_an_object_that_is_not_an_image_is_refused_with_415(server, runs, size):
    # notes.png (map index 3) is a text file: its edit failed, and its source is linked, not drawn.
    answer = image(server, runs, "viewer", 3, "source-0", size)

    assert answer.status_code == 415
    assert b"not a picture" not in answer.content
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'none'" in answer.headers["Content-Security-Policy"]


def test_a_user_limited_to_another_dag_is_refused(server, runs):
    assert get(server, run_path(BACKFILL, runs[BACKFILL]), "alice").status_code == 403
    assert image(server, runs, "alice", 0).status_code == 403
    allowed = get(server, run_path(SCHEDULED, runs[SCHEDULED]), "alice")
    assert allowed.status_code == 200 and "<h2>cup.png</h2>" in allowed.text


def test_a_task_that_made_no_image_is_not_found(server, runs):
    # notes.png is map index 3 (key order: garden/..., lamp, mug, notes): it failed, so it has no output.
    assert image(server, runs, "viewer", 3).status_code == 404
    assert image(server, runs, "viewer", -1, task_id="list_images").status_code == 404
    assert image(server, runs, "viewer", 0, "source-5").status_code == 404


@pytest.mark.parametrize(
    ("path", "params", "statuses"),
    [
        ("/dags/..%2F..%2Fetc/runs/RUN", {}, {403, 404, 422}),
        ("/dags/bettertoken_backfill/runs/" + quote("s3://gout/any/key.png", safe=""), {}, {404}),
        ("/dags/bettertoken_backfill/runs/RUN/image", {"task_id": "../../x", "map_index": 0, "which": "output"}, {422}),
        ("/dags/bettertoken_backfill/runs/RUN/image", {"task_id": "edit_image", "map_index": "0 OR 1=1", "which": "output"}, {422}),
        ("/dags/bettertoken_backfill/runs/RUN/image", {"task_id": "edit_image", "map_index": 0, "which": "s3://gout/x.png"}, {422}),
        ("/dags/bettertoken_backfill/runs/RUN/image", {"task_id": "edit_image", "map_index": 0, "which": "../../secret"}, {422}),
        ("/dags/bettertoken_backfill/runs/RUN/image", {"task_id": "edit_image", "map_index": 0, "which": "output", "size": "../x"}, {422}),
        ("/dags/bettertoken_backfill/runs/RUN/image", {"task_id": "edit_image", "map_index": 0, "which": "source-99"}, {422}),
        ("/dags/bettertoken_backfill/runs/..%2F..%2Fstatic/image", {"task_id": "edit_image", "map_index": 0, "which": "output"}, {404}),
    ],
    ids=[
        "dag-id-traversal", "uri-as-run-id", "task-id-traversal", "map-index-injection", "uri-as-which",
        "which-traversal", "size-traversal", "source-out-of-range", "run-id-traversal",
    ],
)  # fmt: skip
def test_traversal_and_uri_injection_are_refused(server, runs, path, params, statuses):
    url = f"{server.url}/bettertoken{path.replace('RUN', quote(runs[BACKFILL], safe=''))}"
    answer = requests.get(
        url, params=params, headers={"Authorization": f"Bearer {server.token('admin')}"}, timeout=60
    )
    assert answer.status_code in statuses, answer.text[:300]
    assert not answer.headers.get("content-type", "").startswith("image/")
