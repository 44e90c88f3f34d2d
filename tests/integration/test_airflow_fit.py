"""How the provider fits Airflow: the CLI knows it, and it reports lineage and metrics."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.testing.samples import sample_image


def airflow_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_lists_the_provider_and_its_connection_type():
    providers = airflow_cli("providers", "list", "--output", "plain")
    assert "airflow-bettertoken" in providers.stdout, providers.stderr[-2000:]
    hooks = airflow_cli("providers", "hooks", "--output", "plain")
    line = next(line for line in hooks.stdout.splitlines() if line.startswith("bettertoken "))
    assert "airflow_bettertoken.hooks.bettertoken.BetterTokenHook" in line


@pytest.mark.usefixtures("airflow_db")
def test_connections_test_succeeds_against_the_emulator(emulator, api_key):
    result = airflow_cli(
        "connections", "test", "bettertoken_default", AIRFLOW__CORE__TEST_CONNECTION="Enabled"
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Connection success!" in result.stdout
    assert api_key not in result.stdout + result.stderr
    assert emulator.stats()["posts"] == 0


def edit_once(s3, buckets, context) -> BetterTokenImageEditOperator:
    s3.put_object(Bucket=buckets.src, Key="a/b.png", Body=sample_image(64, 64))
    op = BetterTokenImageEditOperator(
        task_id="edit", prompt="p", source=f"s3://{buckets.src}/a/b.png", dest=f"s3://{buckets.out}/c/"
    )
    op.execute(context)
    return op


def test_openlineage_reports_the_s3_inputs_and_output(s3, buckets, emulator, task_context):
    op = edit_once(s3, buckets, task_context)
    lineage = op.get_openlineage_facets_on_complete(task_instance=None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [(f"s3://{buckets.src}", "a/b.png")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [(f"s3://{buckets.out}", "c/b.png")]


def test_metrics_cover_latency_attempts_bytes_mismatches_and_skips(
    s3, buckets, emulator, task_context, monkeypatch
):
    from airflow.providers.common.compat.sdk import Stats

    seen: list[tuple[str, str, float]] = []
    monkeypatch.setattr(Stats, "incr", lambda name, count=1, *a, **k: seen.append(("incr", name, count)))
    monkeypatch.setattr(Stats, "timing", lambda name, value, *a, **k: seen.append(("timing", name, value)))
    emulator.configure(size_map={"1024x1024": "1000x1000"})
    s3.put_object(Bucket=buckets.src, Key="a.png", Body=sample_image(64, 64))
    for _ in range(2):  # the second run is skipped
        BetterTokenImageEditOperator(
            task_id="edit",
            prompt="p",
            source=f"s3://{buckets.src}/a.png",
            dest=f"s3://{buckets.out}/a.png",
            size="1024x1024",
        ).execute(task_context)

    names = {(kind, name) for kind, name, _ in seen}
    assert names == {
        ("timing", "bettertoken.request.latency"),
        ("incr", "bettertoken.request.attempts"),
        ("incr", "bettertoken.response.png_bytes"),
        ("incr", "bettertoken.output.size_mismatch"),
        ("incr", "bettertoken.output.skipped"),
    }
    assert ("incr", "bettertoken.request.attempts", 1) in seen
