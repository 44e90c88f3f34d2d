"""The gallery's fixtures: runs made by the example DAGs, and a real API server to show them."""

from __future__ import annotations

import uuid

import pendulum
import pytest

from airflow_bettertoken.testing.samples import sample_image
from tests.airflow_versions import load_dag
from tests.integration.gallery.server import ApiServer

BACKFILL, SCHEDULED = "bettertoken_backfill", "bettertoken_scheduled_edit"
DAY = "2026-11-20"


@pytest.fixture(scope="package")
def runs(s3, sandbox, airflow_db):
    """A backfill run (3 edits, sizes differ from the request, and 1 failed) and a scheduled run."""
    control = sandbox.emulator.control
    control.reset()
    control.configure(size_map={"1024x1024": "1000x1000"})
    src, out = f"gin-{uuid.uuid4().hex[:8]}", f"gout-{uuid.uuid4().hex[:8]}"
    for bucket in (src, out):
        s3.create_bucket(Bucket=bucket)
    for index, name in enumerate(["mug.jpg", "garden/tools/rake.png", "lamp.webp"]):
        s3.put_object(
            Bucket=src, Key=f"catalog/{name}", Body=sample_image(320, 240, name.rsplit(".")[-1], index)
        )
    s3.put_object(Bucket=src, Key="catalog/notes.png", Body=b"not a picture")
    s3.put_object(Bucket=src, Key=f"incoming/{DAY}/cup.png", Body=sample_image(200, 200))
    conf = {"in_bucket": src, "out_bucket": out, "size": "1024x1024"}
    backfill = load_dag(BACKFILL).test(run_conf=conf)
    scheduled = load_dag(SCHEDULED).test(logical_date=pendulum.parse(DAY), run_conf=conf)
    control.reset()
    return {BACKFILL: backfill.run_id, SCHEDULED: scheduled.run_id}


@pytest.fixture(scope="package")
def server(runs, tmp_path_factory):
    api = ApiServer(tmp_path_factory.mktemp("gallery")).start()
    yield api
    api.stop()
