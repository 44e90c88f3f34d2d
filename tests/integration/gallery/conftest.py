"""The gallery's fixtures: runs made by the DAGs, a real API server to show them, and XCom forged
through that server's REST API as a user with XCom rights would."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pendulum
import pytest
import requests
from PIL import Image

from airflow_bettertoken.testing.samples import sample_image
from tests.airflow_versions import dagbag, has_external_views, load_dag
from tests.integration.gallery.browser import chromium, require_chromium
from tests.integration.gallery.server import ApiServer
from tests.integration.s3_fault_proxy import S3FaultProxy

BACKFILL, SCHEDULED = "bettertoken_backfill", "bettertoken_scheduled_edit"
COUNTED = "bettertoken_gallery_counted"
DAY = "2026-11-20"
GALLERY_DAGS = Path(__file__).parent / "dags"
LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"
# The example DAGs' bundle as Airflow configures it by default, and one for the gallery's own DAGs.
BUNDLES = [
    {"name": "dags-folder", "classpath": LOCAL_BUNDLE, "kwargs": {}},
    {"name": "gallery-tests", "classpath": LOCAL_BUNDLE, "kwargs": {"path": str(GALLERY_DAGS)}},
]
#: Edits in the counted run: 24 mapped and a cover, so that its page shows 50 thumbnails.
COUNTED_IMAGES = 24
#: A secret in another bucket, that forged XCom names; 123x321 pixels, a size no edit's image has.
SECRET_TEXT = b"the merger closes on Friday"
SECRET_SIZE = (123, 321)


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
def counted_s3(sandbox):
    """A proxy in front of moto that records every request made through the connection ``aws_counted``."""
    proxy = S3FaultProxy(sandbox.s3_endpoint).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="package")
def gallery_env(sandbox, counted_s3, airflow_db):
    """For this package, in the tests and the API server: the gallery's DAG bundle, serialized, and the
    connections ``aws_counted`` (through the proxy) and ``aws_secret`` (which forged XCom names)."""
    env = {
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(BUNDLES),
        "AIRFLOW_CONN_AWS_COUNTED": json.dumps(sandbox.aws_connection(counted_s3.endpoint)),
        "AIRFLOW_CONN_AWS_SECRET": json.dumps(sandbox.aws_connection()),
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        command = [sys.executable, "-m", "airflow", "dags", "reserialize", "--bundle-name", "gallery-tests"]
        subprocess.run(command, check=True, capture_output=True)
        yield


@pytest.fixture(scope="package")
def server(runs, gallery_env, tmp_path_factory):
    api = ApiServer(tmp_path_factory.mktemp("gallery")).start()
    yield api
    api.stop()


@pytest.fixture(scope="package")
def counted_run(s3, sandbox, gallery_env):
    """A run of the gallery's DAG: 24 mapped edits and a cover, by a subclass, through ``aws_counted``."""
    sandbox.emulator.control.reset()
    src, out = f"cin-{uuid.uuid4().hex[:8]}", f"cout-{uuid.uuid4().hex[:8]}"
    for bucket in (src, out):
        s3.create_bucket(Bucket=bucket)
    for index in range(COUNTED_IMAGES):
        s3.put_object(Bucket=src, Key=f"catalog/item-{index:02}.png", Body=sample_image(160, 120, seed=index))
    s3.put_object(Bucket=src, Key="cover.png", Body=sample_image(200, 120, seed=99))
    run = dagbag(GALLERY_DAGS).get_dag(COUNTED).test(run_conf={"in_bucket": src, "out_bucket": out})
    assert run.state == "success"
    return run.run_id


def secret_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", SECRET_SIZE, (255, 0, 255)).save(out, format="PNG")
    return out.getvalue()


def xcom_url(server: ApiServer, dag_id: str, run_id: str, task_id: str) -> str:
    run = quote(run_id, safe="")
    return f"{server.url}/api/v2/dags/{dag_id}/dagRuns/{run}/taskInstances/{task_id}/xcomEntries"


def reason_for_patched(stored: object) -> str:
    """The reason a row gives for a PATCHed record: Airflow 3.0 and 3.1 serialize a PATCHed value
    twice, so it is stored as a JSON string, which reads as no edit record at all; 3.2+ keep it."""
    return "names other objects than" if isinstance(stored, dict) else "is not an edit's record"


@pytest.fixture(scope="package")
def forged(s3, sandbox, server):
    """Two backfill runs whose edits' XCom was then forged through the REST API, as an admin could:

    - ``run``: ``lamp.png`` (left alone), ``mug.png`` (its return value PATCHed) and ``notes.png``
      (failed: a return value POSTed, its failure PATCHed);
    - ``empty_run``: a source prefix with no image, so the listing failed and ``edit_image[-1]``
      never ran (``upstream_failed``) and has no XCom; a failure record POSTed.

    Each forged record names objects of the bucket ``secret`` and the connection ``aws_secret``.
    """
    sandbox.emulator.control.reset()
    src, out, secret = (f"{kind}-{uuid.uuid4().hex[:8]}" for kind in ("fin", "fout", "secret"))
    for bucket in (src, out, secret):
        s3.create_bucket(Bucket=bucket)
    for index, name in enumerate(["lamp.png", "mug.png"]):
        s3.put_object(Bucket=src, Key=f"catalog/{name}", Body=sample_image(320, 240, seed=index))
    s3.put_object(Bucket=src, Key="catalog/notes.png", Body=b"these are notes, not a picture")
    s3.put_object(Bucket=secret, Key="merger.txt", Body=SECRET_TEXT)
    s3.put_object(Bucket=secret, Key="plans.png", Body=secret_png())
    secret_text, secret_image = f"s3://{secret}/merger.txt", f"s3://{secret}/plans.png"

    dag = load_dag(BACKFILL)
    run = dag.test(run_conf={"in_bucket": src, "out_bucket": out}).run_id
    empty_run = dag.test(run_conf={"in_bucket": src, "out_bucket": out, "source_prefix": "none/"}).run_id

    admin = {"Authorization": f"Bearer {server.token('admin')}"}
    edits = xcom_url(server, BACKFILL, run, "edit_image")
    mug = requests.get(f"{edits}/return_value", params={"map_index": 1}, headers=admin, timeout=60)
    mug.raise_for_status()
    real = mug.json()["value"]
    forged_result = {
        **real,
        "output_uri": secret_image,
        "bucket": secret,
        "key": "plans.png",
        "source_uris": [secret_text, secret_image],
        "aws_conn_id": "aws_secret",
    }
    forged_failure = {
        "source": secret_text,
        "dest": f"s3://{secret}/",
        "error": "BetterTokenInputError",
        "reason": "forged",
        "aws_conn_id": "aws_secret",
    }
    answers = [
        requests.patch(
            f"{edits}/return_value", json={"value": forged_result, "map_index": 1}, headers=admin, timeout=60
        ),
        requests.post(
            edits,
            json={"key": "return_value", "value": forged_result, "map_index": 2},
            headers=admin,
            timeout=60,
        ),
        requests.patch(
            f"{edits}/failure", json={"value": forged_failure, "map_index": 2}, headers=admin, timeout=60
        ),
        requests.post(
            xcom_url(server, BACKFILL, empty_run, "edit_image"),
            json={"key": "failure", "value": forged_failure, "map_index": -1},
            headers=admin,
            timeout=60,
        ),
    ]
    assert [answer.status_code for answer in answers] == [200, 201, 200, 201], [a.text[:300] for a in answers]
    stored = requests.get(f"{edits}/return_value", params={"map_index": 1}, headers=admin, timeout=60)
    return {
        "patched_reason": reason_for_patched(stored.json()["value"]),
        "run": run,
        "empty_run": empty_run,
        "secret_text": secret_text,
        "secret_image": secret_image,
        "forged_rows": [(run, 1), (run, 2), (empty_run, -1)],
    }


@pytest.fixture
def browser():
    if not has_external_views():
        pytest.skip(
            "Airflow 3.0 has no plugin views in its UI; the gallery's own pages are tested by the API tests"
        )
    require_chromium()
    driver = chromium()
    yield driver
    driver.quit()
