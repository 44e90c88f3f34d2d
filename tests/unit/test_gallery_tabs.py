"""The plugin's tabs: Airflow 3.1+ cannot limit them to some DAGs, so an admin can turn each off."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airflow_bettertoken.plugins.gallery import tabs

SHOW_TABS = (
    "from airflow_bettertoken.plugins.gallery import BetterTokenPlugin; import json; "
    "print(json.dumps([view['url_route'] for view in BetterTokenPlugin.external_views]))"
)


@pytest.mark.parametrize(
    ("gallery_tab", "catalog_tab", "routes"),
    [
        (True, True, ["bettertoken-run", "bettertoken-task", "bettertoken-catalog"]),
        (False, True, ["bettertoken-catalog"]),
        (True, False, ["bettertoken-run", "bettertoken-task"]),
        (False, False, []),
    ],
)
def test_each_setting_turns_its_tabs_off(gallery_tab, catalog_tab, routes):
    assert [view["url_route"] for view in tabs(gallery_tab, catalog_tab)] == routes


def test_the_plugin_reads_the_settings_from_airflows_config():
    env = {**os.environ, "AIRFLOW__BETTERTOKEN__CATALOG_TAB": "False"}
    shown = subprocess.run(
        [sys.executable, "-c", SHOW_TABS], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(shown.stdout.strip().splitlines()[-1]) == ["bettertoken-run", "bettertoken-task"]
