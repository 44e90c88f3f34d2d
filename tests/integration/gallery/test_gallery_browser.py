"""The gallery as a user sees it: log in to a real Airflow UI in headless Chromium, open a run's
"Edited images" view, and check that every image loaded and the size badge shows; and that a run whose
XCom was forged shows those rows as text, with the reason, and no image."""

from __future__ import annotations

import time
from urllib.parse import quote

from tests.integration.gallery.conftest import BACKFILL


def wait_for(predicate, timeout: float = 60, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.25)
    return value


def log_in(browser, server, user: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/auth/login?next=%2F")
    wait_for(lambda: browser.find_elements(By.NAME, "username"), what="the login form")
    browser.find_element(By.NAME, "username").send_keys(user)
    browser.find_element(By.NAME, "password").send_keys(server.passwords[user])
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(lambda: "/auth/login" not in browser.current_url, what="the login to finish")


def open_view(browser, server, run_id: str) -> list[int]:
    """Open the run's "Edited images" view, switch into its frame; the widths of its loaded images."""
    from selenium.webdriver.common.by import By

    browser.get(f"{server.url}/dags/{BACKFILL}/runs/{quote(run_id, safe='')}/plugin/bettertoken-run")
    frame = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "iframe"), what="the view's frame")[0]
    frame_src = frame.get_attribute("src")
    assert "/bettertoken/dags/bettertoken_backfill/runs/" in frame_src
    browser.switch_to.frame(frame)
    try:
        wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "article.edit"), what="the gallery rows")
    except TimeoutError as err:
        raise AssertionError(f"{err}; the frame ({frame_src}) shows: {browser.page_source[:600]}") from err
    images = browser.find_elements(By.CSS_SELECTOR, "article.edit img")
    for image in images:  # lazy images load once scrolled to
        browser.execute_script("arguments[0].scrollIntoView();", image)
    loaded = wait_for(
        lambda: all(browser.execute_script("return arguments[0].complete", i) for i in images) and images,
        what="the images",
    )
    return [browser.execute_script("return arguments[0].naturalWidth", image) for image in loaded]


def test_the_edited_images_view_shows_every_image_and_the_size_badge(browser, server, runs, tmp_path):
    from selenium.webdriver.common.by import By

    log_in(browser, server, "viewer")
    widths = open_view(browser, server, runs[BACKFILL])
    badges = [
        badge.is_displayed() for badge in browser.find_elements(By.CSS_SELECTOR, "article .badge-mismatch")
    ]
    labels = [h2.text for h2 in browser.find_elements(By.CSS_SELECTOR, "article.edit h2")]
    browser.execute_script("window.scrollTo(0, 0)")
    browser.switch_to.default_content()
    screenshot = tmp_path / "gallery.png"
    browser.save_screenshot(str(screenshot))
    print(f"\ngallery screenshot: {screenshot}")

    assert len(widths) == 6  # 3 done edits: a source and an output each (the failed one links its source)
    assert all(width > 0 for width in widths), widths
    assert badges == [True, True, True]  # every output is 1000x1000 where 1024x1024 was asked for
    assert labels == ["garden/tools/rake.png", "lamp.webp", "mug.jpg", "notes.png"]


def test_rows_whose_xcom_was_forged_show_text_and_why_and_no_image(browser, server, forged, tmp_path):
    from selenium.webdriver.common.by import By

    log_in(browser, server, "viewer")
    widths = open_view(browser, server, forged["run"])
    reasons = [
        element.text
        for element in browser.find_elements(By.CSS_SELECTOR, "article.edit .reason")
        if element.text.startswith("not verified")
    ]
    labels = [h2.text for h2 in browser.find_elements(By.CSS_SELECTOR, "article.edit h2")]
    browser.switch_to.default_content()
    screenshot = tmp_path / "gallery-forged.png"
    browser.save_screenshot(str(screenshot))
    print(f"\ngallery screenshot of forged rows: {screenshot}")

    assert labels == ["lamp.png", "mug.png", "notes.png"]
    assert len(widths) == 2 and all(width > 0 for width in widths)  # lamp.png's source and output only
    assert len(reasons) == 2 and all(forged["patched_reason"] in reason for reason in reasons), reasons
