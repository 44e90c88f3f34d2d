"""Behind a real proxy that cuts requests shorter than an edit takes: nginx, as a user's gateway would."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from airflow_bettertoken.testing.samples import sample_image
from tests.airflow_versions import load_dag
from tests.conftest import FAST_RETRIES
from tests.integration.test_pipelines import run_manifests
from tests.nginx import Nginx

pytestmark = pytest.mark.usefixtures("airflow_db")

IMAGES = 6


def test_a_backfill_behind_a_proxy_that_cuts_pays_two_calls_an_image_then_stops(
    s3, buckets, emulator, sandbox, monkeypatch
):
    for index in range(IMAGES):
        s3.put_object(
            Bucket=buckets.src, Key=f"catalog/item-{index}.png", Body=sample_image(64, 48, seed=index)
        )
    emulator.configure(latency=3)  # an edit takes 3 s; nginx cuts at 1 s, as ALB does at 60 s

    with Nginx(sandbox.emulator.port, read_timeout=1) as nginx:
        connection = {
            "conn_type": "bettertoken",
            "host": f"{nginx.url}/v1",
            "password": sandbox.api_key,
            "extra": FAST_RETRIES,
        }
        monkeypatch.setenv("AIRFLOW_CONN_BETTERTOKEN_DEFAULT", json.dumps(connection))
        run = load_dag("bettertoken_backfill").test(
            run_conf={"in_bucket": buckets.src, "out_bucket": buckets.out}
        )

    assert run.state == "failed"
    # Two calls for each of the first three images, each cut after about a second; then the run stops.
    posts = Counter(request["files"][0]["filename"] for request in emulator.stats()["requests"])
    assert sorted(posts.values()) == [2, 2, 2], posts
    assert emulator.stats()["paid"] == 6  # what the service would have billed: every call it read

    manifest = run_manifests(s3, buckets.out, "catalog-edited/")[run.run_id]
    assert manifest["counts"]["failed"] == IMAGES
    assert manifest["spend"] == {
        "posts": 6,
        "paid": 0,
        "maybe_billed": 6,
        "images_stored": 0,
        "billed_without_image": 6,
        "stopped_by_budget": 3,
        "stopped_by_run": 3,
        # No price table in the connection: every call is counted, none priced.
        "calls_unpriced": 6,
        "cost": "0",
        "cost_estimated": "0",
    }
    reasons = [failure["reason"] for failure in manifest["failures"]]
    proxy_hint = (
        "not sent: each of 2 calls was cut after about 1 s: a proxy or load balancer between this "
        "worker and BetterToken closes requests sooner than an edit takes; raise its timeout"
    )
    stop = "not sent: 3 edits of this run in a row ended in calls that were cut after they were sent"
    assert sorted(reason.startswith(proxy_hint) for reason in reasons) == [False] * 3 + [True] * 3, reasons
    stopped = [reason for reason in reasons if reason.startswith(stop)]
    assert len(stopped) == 3 and all(proxy_hint.removeprefix("not sent: ") in r for r in stopped), stopped
