"""The catalog page in a real API server: a chain of three backfill runs, its progress, spend, pace,
runs and failures, as the chain's own record says; the same auth as the gallery; and in Chromium."""

from __future__ import annotations

import re
import uuid
from urllib.parse import quote

import pytest
from airflow.models.dagrun import DagRun

from airflow_bettertoken.testing.samples import sample_image
from tests.airflow_versions import load_dag
from tests.integration.gallery.conftest import BACKFILL, SCHEDULED
from tests.integration.gallery.test_gallery_api import get, run_path
from tests.integration.gallery.test_gallery_browser import log_in, wait_for

GOOD = ["a-lamp.png", "b-mug.png", "c-vase.png", "d-rake.png"]


@pytest.fixture(scope="module")
def chain(s3, sandbox, server):
    """Three runs of one chain, two edits each at most, over 5 images: the first in key order is a
    text file named ``.png``, which fails for good in the first run and is not planned again."""
    sandbox.emulator.control.reset()
    src, out = f"kin-{uuid.uuid4().hex[:8]}", f"kout-{uuid.uuid4().hex[:8]}"
    for bucket in (src, out):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=src, Key="catalog/0-notes.png", Body=b"notes, not a picture")
    for index, name in enumerate(GOOD):
        s3.put_object(Bucket=src, Key=f"catalog/{name}", Body=sample_image(160, 120, seed=index))
    root = f"catalog-{uuid.uuid4().hex[:6]}"
    run_ids = [root, f"{root}__chunk2", f"{root}__chunk3"]
    conf = {"in_bucket": src, "out_bucket": out, "max_edits_per_run": 2, "size": "1024x1024"}
    dag = load_dag(BACKFILL)
    states = []
    with pytest.MonkeyPatch.context() as patch:
        for run_id in run_ids:
            # dag.test() names its run itself; the chain's runs are named as next_chunk names them.
            patch.setattr(DagRun, "generate_run_id", staticmethod(lambda *, _id=run_id, **_: _id))
            run = dag.test(run_conf=conf)
            assert run.run_id == run_id
            states.append(run.state)
    assert states == ["failed", "success", "success"]  # the text file fails the first run
    sandbox.emulator.control.reset()
    return {"runs": run_ids, "out": out}


def catalog_path(run_id: str) -> str:
    return run_path(BACKFILL, run_id) + "/catalog"


def test_the_catalog_page_shows_progress_spend_pace_runs_and_failures(server, chain):
    page = get(server, catalog_path(chain["runs"][-1]), "viewer")

    assert page.status_code == 200, page.text[-500:]
    html = page.text
    assert '<progress class="catalog" max="5" value="4">' in html
    assert "4 of 5 images done (80.0%)" in html
    figures = dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", html))
    assert figures["done"] == "4" and figures["remaining"] == "0"
    assert (figures["failed for good"], figures["blocked by the spend budget"]) == ("1", "0")
    assert (figures["POSTs"], figures["paid"], figures["maybe billed"]) == ("4", "4", "0")
    assert figures["remaining time"] == "done"
    links = re.findall(r'<td><a href="\.\./([^"]+)">([^<]+)</a></td>', html)
    run_links = [(quote(run_id, safe=""), run_id) for run_id in chain["runs"]]
    assert links[:3] == run_links  # each run of the chain, linked to its gallery page
    assert links[3] == run_links[0]  # the failure, linked to the run where it failed
    assert "0-notes.png" in html and "BetterTokenInputError" in html
    assert f"s3://{chain['out']}/_bettertoken/chains/{BACKFILL}/{chain['runs'][0]}.json" in html
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")


def test_every_run_of_the_chain_shows_the_same_catalog_and_links_to_it(server, chain):
    pages = [get(server, catalog_path(run_id), "viewer").text for run_id in chain["runs"]]
    gallery = get(server, run_path(BACKFILL, chain["runs"][1]), "viewer").text

    assert all('value="4"' in page for page in pages)
    assert f'<a href="{quote(chain["runs"][1], safe="")}/catalog">catalog progress</a>' in gallery


def test_the_catalog_page_is_refused_as_the_gallery_is(server, chain):
    path = catalog_path(chain["runs"][0])

    assert get(server, path).status_code == 401
    assert get(server, path, "alice").status_code == 403  # alice may read another DAG only
    assert get(server, run_path(BACKFILL, "no-such-run") + "/catalog", "viewer").status_code == 404


def test_a_run_of_the_scheduled_dag_shows_its_day(server, runs):
    scheduled = get(server, run_path(SCHEDULED, runs[SCHEDULED]) + "/catalog", "viewer")

    assert scheduled.status_code == 200
    assert '<progress class="catalog" max="1" value="1">' in scheduled.text  # its day's one image


def test_the_catalog_view_in_chromium(browser, server, chain, tmp_path):
    from selenium.webdriver.common.by import By

    log_in(browser, server, "viewer")
    run = quote(chain["runs"][-1], safe="")
    browser.get(f"{server.url}/dags/{BACKFILL}/runs/{run}/plugin/bettertoken-catalog")
    frame = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "iframe"), what="the view's frame")[0]
    browser.switch_to.frame(frame)
    bar = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "progress.catalog"), what="the bar")[0]
    shown = (bar.get_attribute("value"), bar.get_attribute("max"))
    rows = len(browser.find_elements(By.CSS_SELECTOR, "table.catalog tr"))
    browser.switch_to.default_content()
    screenshot = tmp_path / "catalog.png"
    browser.save_screenshot(str(screenshot))
    print(f"\ncatalog screenshot: {screenshot}")

    assert shown == ("4", "5")
    assert rows == 1 + 3 + 1 + 1  # the runs' head and 3 runs, the failures' head and 1 failure


def test_a_table_enrichment_run_shows_its_chain(s3, buckets, sandbox, server):
    """The products example (a table's row planner, not a catalog listing): its run's catalog page
    shows its chain's record, found from the row planner's rendered fields."""
    sandbox.emulator.control.reset()
    if "bettertoken-out" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket="bettertoken-out")  # where the example writes its results tables
    dag = load_dag("bettertoken_products_enrichment")
    conf = {"in_bucket": buckets.src, "out_bucket": buckets.out, "max_edits_per_run": 5}

    run = dag.test(run_conf=conf)
    page = get(server, run_path(dag.dag_id, run.run_id) + "/catalog", "viewer")

    assert run.state == "success"
    assert page.status_code == 200, page.text[-500:]
    assert "has no catalog backfill" not in page.text
    assert '<progress class="catalog" max="20" value="5">' in page.text
    sandbox.emulator.control.reset()
