"""Headless Chromium from Debian's packages (chromium, chromium-driver), driven through Selenium.

Nothing is downloaded: the driver's path is given, so Selenium Manager never runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def require_chromium() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        reason = (
            f"the browser test needs Debian's chromium and chromium-driver ({', '.join(missing)} missing)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; .ci/run installs them, so their absence is a failure here")
        pytest.skip(reason)


def chromium(width: int = 1400, height: int = 1000):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={width},{height}",
        f"--user-data-dir={tempfile.mkdtemp(prefix='bettertoken-chromium-')}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
