"""A requester-pays bucket: the gallery's reads send the edit's ``RequestPayer``, which only the task's
rendered fields name (its DAG templates it; XCom never says how an object is read)."""

from __future__ import annotations

import re
import uuid
from html import unescape
from urllib.parse import quote

import pytest
import requests
from sqlalchemy import delete

from airflow_bettertoken.testing.samples import sample_image
from tests.airflow_versions import dagbag
from tests.integration.gallery.conftest import GALLERY_DAGS

PAYER = "bettertoken_gallery_requester_pays"


def run_url(server) -> str:
    return f"{server.url}/bettertoken/dags/{PAYER}/runs/"


def page(server, run_id) -> str:
    headers = {"Authorization": f"Bearer {server.token('viewer')}"}
    return requests.get(run_url(server) + quote(run_id, safe=""), headers=headers, timeout=60).text


@pytest.fixture(scope="module")
def payer_run(s3, sandbox, gallery_env, counted_s3):
    """A run whose edit reads and writes requester-pays buckets, as its ``s3_extra_args`` say."""
    sandbox.emulator.control.reset()
    src, out = f"pin-{uuid.uuid4().hex[:8]}", f"pout-{uuid.uuid4().hex[:8]}"
    for bucket in (src, out):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=src, Key="photo.png", Body=sample_image(200, 150, seed=7))
    counted_s3.requester_pays = True  # every request without x-amz-request-payer: 403
    try:
        run = dagbag(GALLERY_DAGS).get_dag(PAYER).test(run_conf={"in_bucket": src, "out_bucket": out})
        assert run.state == "success"
        yield run.run_id
    finally:
        counted_s3.requester_pays = False


def test_its_images_show_read_with_the_rendered_request_payer(server, payer_run, counted_s3):
    headers = {"Authorization": f"Bearer {server.token('viewer')}"}
    html = page(server, payer_run)
    thumbnails = [unescape(src) for src in re.findall(r'<img src="([^"]*)"', html)]
    counted_s3.requests.clear()
    answers = [requests.get(run_url(server) + src, headers=headers, timeout=60) for src in thumbnails]

    assert len(thumbnails) == 2  # the source and the output
    assert [(a.status_code, a.headers["content-type"]) for a in answers] == [(200, "image/jpeg")] * 2
    assert {method for method, _ in counted_s3.requests} == {"HEAD", "GET"}  # all of them paid by us


def test_without_the_rendered_fields_nothing_names_the_request_payer(server, payer_run):
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session

    with create_session() as session:
        session.execute(delete(RenderedTaskInstanceFields).where(RenderedTaskInstanceFields.dag_id == PAYER))
    html = page(server, payer_run)

    # The DAG's RequestPayer is a template and the XCom names none: the output's metadata cannot be read.
    assert "<img " not in html
    assert "does not carry this task instance's name in its S3 metadata" in unescape(html)
