"""The gallery tells the truth about runs without edits: a DAG with no BetterToken task, a run whose
listing failed, and a run with nothing left to edit; and every badge it shows is in its legend."""

from __future__ import annotations

import re
import time
import uuid
from html import unescape
from urllib.parse import quote, urljoin

import pytest

from airflow_bettertoken.testing.samples import sample_image
from tests.airflow_versions import dagbag, load_dag
from tests.integration.gallery.conftest import BACKFILL, GALLERY_DAGS
from tests.integration.gallery.test_gallery_api import get, run_path
from tests.integration.gallery.test_gallery_browser import log_in, wait_for

NO_EDITS = "bettertoken_gallery_no_edits"


@pytest.fixture(scope="module")
def no_edits_run(server):
    run = dagbag(GALLERY_DAGS).get_dag(NO_EDITS).test()
    assert run.state == "success"
    return run.run_id


@pytest.fixture(scope="module")
def backfill_runs(s3, sandbox, server):
    """A run whose listing failed (a mistyped source prefix), and one with every output already there."""
    sandbox.emulator.control.reset()
    src, out = f"tin-{uuid.uuid4().hex[:8]}", f"tout-{uuid.uuid4().hex[:8]}"
    for bucket in (src, out):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=src, Key="catalog/vase.png", Body=sample_image(64, 48))
    # Every conf names its source_prefix: a DAG's dag.test() keeps the params of its last run_conf.
    conf = {"in_bucket": src, "out_bucket": out, "source_prefix": "catalog/"}
    dag = load_dag(BACKFILL)
    failed = dag.test(run_conf={**conf, "source_prefix": "catalgo/"})
    first, all_done = dag.test(run_conf=conf), dag.test(run_conf=conf)
    states = {ti.task_id: ti.state for ti in first.get_task_instances()}
    assert (failed.state, first.state, all_done.state) == ("failed", "success", "success"), states
    return {"listing_failed": failed.run_id, "all_done": all_done.run_id}


def articles(html: str) -> list[str]:
    return re.findall(r'<article class="edit">(.*?)</article>', html)


def test_a_dag_without_edits_gets_a_plain_page_on_both_tabs(server, no_edits_run):
    gallery = get(server, run_path(NO_EDITS, no_edits_run), "viewer")
    catalog = get(server, run_path(NO_EDITS, no_edits_run) + "/catalog", "viewer")

    assert (gallery.status_code, catalog.status_code) == (200, 200)
    assert "This run has no image edits: its DAG has no BetterToken edit task" in gallery.text
    assert "[bettertoken] gallery_tab = False" in gallery.text
    assert (
        "This run has no catalog backfill" in catalog.text
        and "[bettertoken] catalog_tab = False" in catalog.text
    )
    # Neutral: no row, no legend, no red reason, no word about rendered fields.
    for html in (gallery.text, catalog.text):
        assert not articles(html) and 'class="reason"' not in html and "rendered fields" not in html
    assert "Legend" not in gallery.text


def test_a_run_whose_listing_failed_says_why_its_edit_did_not_run(server, backfill_runs):
    run_id = backfill_runs["listing_failed"]
    html = get(server, run_path(BACKFILL, run_id), "viewer").text

    [row] = articles(html)
    assert 'status-not-run">not run' in row and "status-failed" not in row
    assert "not run: list_images failed" in row
    # The link to the listing's log, in Airflow's own UI, from /bettertoken/dags/<dag>/runs/<run>.
    log_link = unescape(re.search(r'href="([^"]*/tasks/list_images)"', row).group(1))
    page_url = f"{server.url}/bettertoken{run_path(BACKFILL, run_id)}"
    assert urljoin(page_url, log_link) == f"{server.url}{run_path(BACKFILL, run_id)}/tasks/list_images"
    assert "edit_image[-1]" not in html and "Legend" in html


def test_a_run_with_nothing_to_edit_shows_no_phantom_row(server, backfill_runs):
    html = get(server, run_path(BACKFILL, backfill_runs["all_done"]), "viewer").text

    assert not articles(html)
    assert "This run has no image edits: its edit tasks had nothing to edit." in html
    assert "edit_image" not in html and "no image</span>" not in html


def test_every_badge_a_page_can_show_is_in_its_legend(server, runs):
    from airflow_bettertoken.plugins._html import CSS

    html = get(server, run_path(BACKFILL, runs[BACKFILL]), "viewer").text
    legend = html.split('<section class="legend">')[1]
    badges = set(re.findall(r"\.(status-[a-z-]+|badge-[a-z]+)", CSS))

    assert badges == {
        "status-done",
        "status-skipped",
        "status-failed",
        "status-other",
        "status-not-run",
        "badge-mismatch",
    }
    assert all(f"{badge}" in legend for badge in badges)
    assert "not verified" in legend and "size differs" in legend


def frame_text(browser, server, dag_id: str, run_id: str, route: str, screenshot) -> str:
    """The text of a run's plugin tab in Airflow's UI, as a user sees it; a screenshot of the page."""
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/dags/{dag_id}/runs/{quote(run_id, safe='')}/plugin/{route}")
    frame = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "iframe"), what="the tab's frame")[0]
    browser.switch_to.frame(frame)
    text = wait_for(lambda: browser.find_element(By.TAG_NAME, "body").text.strip(), what="the tab's page")
    browser.switch_to.default_content()
    time.sleep(1)  # the tab bar settles
    browser.save_screenshot(str(screenshot))
    print(f"\nscreenshot: {screenshot}")
    return text


def test_the_tabs_of_a_dag_without_edits_and_of_a_failed_listing_in_the_browser(
    browser, server, no_edits_run, backfill_runs, tmp_path
):
    log_in(browser, server, "viewer")
    gallery = frame_text(
        browser, server, NO_EDITS, no_edits_run, "bettertoken-run", tmp_path / "no-edits.png"
    )
    catalog = frame_text(
        browser, server, NO_EDITS, no_edits_run, "bettertoken-catalog", tmp_path / "no-edits-catalog.png"
    )
    failed = frame_text(
        browser, server, BACKFILL, backfill_runs["listing_failed"], "bettertoken-run", tmp_path / "failed.png"
    )

    assert "This run has no image edits: its DAG has no BetterToken edit task" in gallery
    assert "This run has no catalog backfill" in catalog and "rendered fields" not in catalog
    assert "not run: list_images failed" in failed and "Legend" in failed
