"""The backfill DAG on a real cluster: CeleryExecutor, Redis, PostgreSQL and two workers.

``dag.test()`` runs everything in one process and proves nothing about a fleet. Here the
scheduler, the DAG processor, the API server and two Celery workers are separate processes,
and one worker is killed mid-run. Needs PostgreSQL and Redis on 127.0.0.1 (skipped without
them on a laptop; a failure under CI=true).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import boto3
import pytest

from airflow_bettertoken.protocol.png import verify_png
from airflow_bettertoken.protocol.spend import CUT_STREAK_LIMIT, DEFAULT_CLAIM_SECONDS, Outcome, OutputLedger
from airflow_bettertoken.testing.emulator.server import EmulatorControl
from airflow_bettertoken.testing.samples import sample_image
from tests.cluster.cluster import EMULATOR_LATENCY, PG, REDIS, WORKER_CONCURRENCY, Cluster
from tests.ports import reachable

DAG_ID = "bettertoken_backfill"
BUCKET_IN, BUCKET_OUT = "bettertoken-in", "bettertoken-out"  # the DAG's defaults
SLOTS = 2 * WORKER_CONCURRENCY


def require_services() -> None:
    missing = [
        name
        for name, (host, port) in {"PostgreSQL": (PG["host"], PG["port"]), "Redis": REDIS}.items()
        if not reachable(host, port)
    ]
    if missing:
        reason = f"the cluster test needs {' and '.join(missing)} listening on 127.0.0.1"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI has them, so their absence is a failure here")
        pytest.skip(reason)


def announce(request: pytest.FixtureRequest, line: str) -> None:
    """A line on the terminal now, past pytest's capture: the cluster test runs for minutes."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\ncluster: {line}", flush=True)


@pytest.fixture(scope="module")
def cluster(request):
    require_services()
    announce(
        request,
        "starting PostgreSQL-backed Airflow (api-server, scheduler, dag-processor, triggerer, 2 Celery "
        "workers), the emulator behind nginx, and moto; 5 runs follow, about 11 minutes",
    )
    logs = Path(tempfile.mkdtemp(prefix="bettertoken-cluster-"))
    cluster = Cluster(logs)
    cluster.failed = False
    try:
        with failure_names_logs(cluster):
            cluster.start()
            s3_client(cluster)  # the default buckets, so the DAG's own daily run finds nothing to do
            cluster.wait_for_dag(DAG_ID)
        yield cluster
    finally:
        cluster.stop()
        if not cluster.failed:
            shutil.rmtree(logs, ignore_errors=True)


@contextmanager
def failure_names_logs(cluster: Cluster):
    """Keep the component logs of a failed run, and say where they are."""
    try:
        yield
    except Exception as err:
        cluster.failed = True
        raise AssertionError(f"{err}\nComponent logs are kept in {cluster.logs}") from err
    except BaseException:  # Ctrl-C: keep the logs, and let the interruption through untouched
        cluster.failed = True
        raise


def s3_client(cluster: Cluster):
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{cluster.s3_port}",
        aws_access_key_id="cluster",
        aws_secret_access_key="cluster-secret",
        region_name="us-east-1",
    )
    for bucket in (BUCKET_IN, BUCKET_OUT):
        if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
            s3.create_bucket(Bucket=bucket)
    return s3


def emulator(cluster: Cluster) -> EmulatorControl:
    return EmulatorControl(f"http://127.0.0.1:{cluster.emulator_port}")


def seed(s3, prefix: str, count: int) -> list[str]:
    stems = [f"{prefix}shelf-{n % 7}/row-{n % 3}/item-{n:03}" for n in range(count)]
    for n, stem in enumerate(stems):
        s3.put_object(Bucket=BUCKET_IN, Key=f"{stem}.jpg", Body=sample_image(64, 48, "jpg", seed=n))
    return stems


def outputs(s3, prefix: str) -> dict[str, bytes]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET_OUT, Prefix=prefix)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return {key: s3.get_object(Bucket=BUCKET_OUT, Key=key)["Body"].read() for key in keys}


def waits_in_triggerer(cluster: Cluster, run_id: str) -> list[float]:
    """Seconds each edit of the run spent deferred, waiting for another task's claim, from its task log."""
    waits = []
    for path in (cluster.logs / "task-logs").rglob("*.log"):
        if f"run_id={run_id}" not in str(path) or "task_id=edit_image" not in str(path):
            continue
        started = ended = None
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            event, when = str(record.get("event", "")), record.get("timestamp")
            if "waiting in the triggerer" in event and started is None:
                started = when
            elif "Done waiting for another task's claim" in event and started is not None:
                ended = when
        if started and ended:
            waits.append((datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds())
    return waits


def ledgers(s3, prefix: str) -> list[OutputLedger]:
    """The spend ledgers of the outputs under ``prefix``."""
    found = outputs(s3, f"_bettertoken/ledger/{prefix}")
    return [OutputLedger.load(json.loads(body), key) for key, body in found.items()]


def run_manifest(found: dict[str, bytes], prefix: str, run_id: str) -> dict:
    """The run's own manifest; the summary and every run's manifest are taken out of ``found``."""
    runs = {key: found.pop(key) for key in [k for k in found if k.startswith(f"{prefix}_manifests/")]}
    found.pop(f"{prefix}_manifest.json")
    return json.loads(runs[f"{prefix}_manifests/{run_id}.json"])


def conf(source: str, dest: str, **more) -> dict:
    return {"source_prefix": source, "dest_prefix": dest, "size": "1024x1024", **more}


IMAGES = 150  # 300 took 450 s of CI's 40 minutes, and showed nothing more
CHUNK = 60
CHAIN = ["run-1", "run-1__chunk2", "run-1__chunk3"]
CHAIN_LATENCY = 0.5  # the edits of this run answer faster, to keep the test in its time budget


def test_run_1_a_150_image_backfill_in_chained_chunks_uses_both_workers(cluster, cluster_report):
    with failure_names_logs(cluster):
        s3 = s3_client(cluster)
        stems = seed(s3, "set/", IMAGES)
        control = emulator(cluster)
        control.reset()
        control.configure(latency=CHAIN_LATENCY)
        started = time.monotonic()
        cluster.trigger(
            DAG_ID, CHAIN[0], conf("set/", "set-edited/", max_edits_per_run=CHUNK, until_done=True)
        )
        states = [cluster.wait_for_run(DAG_ID, run_id, timeout=300) for run_id in CHAIN]
        wall = time.monotonic() - started

        assert states == ["success"] * 3
        stats = control.stats()
        assert (stats["posts"], stats["paid"]) == (IMAGES, IMAGES)
        runs = cluster.query("SELECT run_id FROM dag_run WHERE dag_id = %s AND run_id LIKE 'run-1%%'", DAG_ID)
        assert sorted(run_id for (run_id,) in runs) == sorted(CHAIN)  # and no fourth
        found = outputs(s3, "set-edited/")
        manifests = [run_manifest(dict(found), "set-edited/", run_id) for run_id in CHAIN]
        assert [m["counts"]["done"] for m in manifests] == [60, 60, 30]
        assert [m["remaining"] for m in manifests] == [90, 30, 0]
        assert [m["next_run_id"] for m in manifests] == [*CHAIN[1:], None]
        summary = json.loads(found["set-edited/_manifest.json"])
        assert (summary["runs"], summary["images_done"]) == (3, IMAGES)
        run_manifest(found, "set-edited/", CHAIN[0])  # takes the manifests out: the images are left
        assert sorted(found) == sorted(f"set-edited/{stem.removeprefix('set/')}.png" for stem in stems)
        assert all(verify_png(png).width == 1024 for png in found.values())
        hosts = {
            host for run_id in CHAIN for _, _, host, _ in cluster.task_instances(DAG_ID, run_id, "edit_image")
        }
        assert hosts == {"worker1", "worker2"}
        ideal = IMAGES * CHAIN_LATENCY / SLOTS
        cluster_report(
            f"run 1: {IMAGES} images with max_edits_per_run={CHUNK} and until_done: {len(CHAIN)} chained "
            f"runs ({', '.join(CHAIN)}), {stats['paid']} paid POSTs, "
            f"{wall:.0f} s wall against an ideal {ideal:.0f} s"
        )
        control.configure(latency=EMULATOR_LATENCY)


def test_run_2_rerun_pays_for_nothing_and_runs_no_edit_task(cluster, cluster_report):
    with failure_names_logs(cluster):
        s3 = s3_client(cluster)
        emulator(cluster).reset()
        cluster.trigger(
            DAG_ID, "run-2", conf("set/", "set-edited/", max_edits_per_run=CHUNK, until_done=True)
        )
        assert cluster.wait_for_run(DAG_ID, "run-2", timeout=300) == "success"

        assert emulator(cluster).stats()["posts"] == 0
        edit_tasks = cluster.task_instances(DAG_ID, "run-2", "edit_image")
        # A mapped task over an empty list leaves one unexpanded row, skipped: no edit task ran.
        assert [(map_index, state) for map_index, state, _, _ in edit_tasks] == [(-1, "skipped")]
        manifest = run_manifest(outputs(s3, "set-edited/"), "set-edited/", "run-2")
        assert manifest["counts"] == {"planned": 0, "done": 0, "skipped": 0, "failed": 0}
        assert (manifest["listing"]["done"], manifest["remaining"], manifest["next_run_id"]) == (
            IMAGES,
            0,
            None,
        )
        cluster_report(f"run 2: rerun of the same {IMAGES} images: 0 POSTs, 0 edit tasks run, no chained run")


def test_run_3_a_worker_killed_mid_run(cluster, cluster_report):
    with failure_names_logs(cluster):
        s3 = s3_client(cluster)
        stems = seed(s3, "kill/", 60)
        control = emulator(cluster)
        control.reset()
        control.configure(latency=6)  # long calls: the edits killed in flight are mostly mid-call
        killed: dict[str, float] = {}

        def running_on_worker_1() -> list[tuple]:
            rows = cluster.task_instances(DAG_ID, "run-3", "edit_image")
            return [row for row in rows if row[1] == "running" and row[2] == "worker1"]

        def worker_1_is_paying() -> bool:
            """A call of worker 1 written down as sent and not ended, by the spend ledgers. (Requests open
            at the emulator may all be worker 2's: a kill then finds worker 1 before its calls.)"""
            return any(
                attempt.outcome is Outcome.OPEN and attempt.by.hostname == "worker1"
                for ledger in ledgers(s3, "kill-edited/")
                for entry in ledger.edits
                for attempt in entry.calls
            )

        def kill_worker_1_once_it_is_paying() -> None:
            if killed or not running_on_worker_1() or not worker_1_is_paying():
                return
            killed["from"] = time.time()
            cluster.kill("worker1")
            killed["to"] = time.time()
            # Its tasks stay "running" in the DB until the scheduler notices: these were in flight.
            killed["tasks"] = len(running_on_worker_1())

        cluster.trigger(DAG_ID, "run-3", conf("kill/", "kill-edited/"))
        state = cluster.wait_for_run(DAG_ID, "run-3", timeout=420, on_tick=kill_worker_1_once_it_is_paying)

        assert killed, "worker 1 never had an edit in flight"
        assert state == "success"
        found = outputs(s3, "kill-edited/")
        assert run_manifest(found, "kill-edited/", "run-3")["counts"]["failed"] == 0
        assert sorted(found) == sorted(f"kill-edited/{stem.removeprefix('kill/')}.png" for stem in stems)
        assert all(verify_png(png).width == 1024 for png in found.values())  # none partial or corrupt
        stats = control.stats()
        # Requests open at any moment of the kill, by the emulator's log (both workers' count).
        open_requests = sum(
            1
            for r in stats["requests"]
            if r["started"] <= killed["to"] and (r["finished"] is None or r["finished"] >= killed["from"])
        )
        paid = stats["paid"]
        # Each task that died in flight may have been billed once before its retry paid again.
        assert 60 <= paid <= 60 + killed["tasks"]
        retried = [row for row in cluster.task_instances(DAG_ID, "run-3", "edit_image") if row[3] > 1]
        assert retried and all(row[2] == "worker2" for row in retried)
        # The retries found the dead worker's claims and waited in the triggerer until they lapsed.
        waits = waits_in_triggerer(cluster, "run-3")
        lapsed = [
            a
            for ledger in ledgers(s3, "kill-edited/")
            for a in ledger.edits[0].calls
            if "renewing" in (a.cause or "")
        ]
        assert len(lapsed) == paid - 60 and waits and all(wait > 0 for wait in waits)
        cluster_report(
            f"run 3: worker 1 killed with {killed['tasks']:.0f} edits in flight ({open_requests} requests "
            f"open at the emulator); {paid} paid POSTs for 60 images, {paid - 60} maybe-billed re-sends; "
            f"{len(retried)} tasks retried on worker 2, of which {len(waits)} waited {min(waits):.0f} to "
            f"{max(waits):.0f} s in the triggerer for the dead worker's claim to lapse "
            f"(claim_seconds={DEFAULT_CLAIM_SECONDS:.0f}) before going on"
        )
        control.configure(latency=EMULATOR_LATENCY)
        peaks = ", ".join(f"{name} {rss / 1e6:.0f} MB" for name, rss in sorted(cluster.peak_memory.items()))
        cluster_report(f"peak memory (PSS) of each worker's process tree: {peaks}")


SAME_PROMPT = "Turn this photo into a clean studio product shot"  # the scheduled DAG's default
DAY = "2026-11-15"  # not the day of the scheduled DAG's own first run, which exists already


def test_run_4_two_dags_on_the_same_images_pay_once_through_a_triggerer_restart(cluster, cluster_report):
    with failure_names_logs(cluster):
        s3 = s3_client(cluster)
        stems = seed(s3, f"incoming/{DAY}/", 24)
        control = emulator(cluster)
        control.reset()
        # Edits long enough that the backfill's first ones are still paying when the scheduled DAG's
        # first ones, for the same images, start: 15 to 30 s after the trigger on 2 cores, with the
        # version matrix running beside; under the gateway's 60 s.
        control.configure(latency=45)
        restarted: dict[str, int] = {}

        def restart_the_triggerer_while_edits_wait() -> None:
            if restarted:
                return
            waiting = cluster.query("SELECT count(*) FROM task_instance WHERE state = 'deferred'")[0][0]
            if waiting:
                restarted["waiting"] = waiting
                cluster.restart("triggerer")  # a deploy: every trigger is cancelled and started again

        cluster.restart("worker1")  # killed in run 3: both workers again
        # Half the slots for the backfill's pool; the scheduled DAG's edits (default pool) take the rest.
        cluster.airflow("pools", "set", "bettertoken", str(SLOTS // 2), "BetterToken paid image edits")
        # The scheduled DAG and a backfill over the same day: the same prompt, size, sources and outputs.
        backfill = {
            "source_prefix": f"incoming/{DAY}/",
            "dest_prefix": f"edited/{DAY}/",
            "prompt": SAME_PROMPT,
        }
        cluster.trigger(DAG_ID, "run-4-backfill", backfill)
        # The scheduled DAG starts once the backfill is paying. Triggered together, the DAG that the
        # scheduler favours could finish every edit before the other one ran any, and nothing would
        # meet (CI saw it). Started now, its first edits are for the images the backfill is paying
        # for: they wait for its claims in the triggerer.
        deadline = time.monotonic() + 180
        while not any(r["finished"] is None for r in control.stats()["requests"]):
            assert time.monotonic() < deadline, "the backfill sent no edit within 180 s"
            time.sleep(0.5)
        cluster.trigger(
            "bettertoken_scheduled_edit", "run-4-scheduled", {}, logical_date=f"{DAY}T00:00:00+00:00"
        )
        states = [
            cluster.wait_for_run(dag_id, run_id, timeout=600, on_tick=restart_the_triggerer_while_edits_wait)
            for dag_id, run_id in (
                ("bettertoken_scheduled_edit", "run-4-scheduled"),
                (DAG_ID, "run-4-backfill"),
            )
        ]

        cluster.airflow("pools", "set", "bettertoken", str(SLOTS), "BetterToken paid image edits")
        assert states == ["success", "success"]
        timeline = cluster.query(
            "SELECT run_id, queued_at, start_date, end_date FROM dag_run WHERE run_id LIKE %s", "run-4-%"
        )
        assert restarted, f"no edit was deferred, so the triggerer was not restarted; the runs: {timeline}"
        stats = control.stats()
        assert (stats["posts"], stats["paid"]) == (24, 24)  # one POST an image, for both DAGs
        found = outputs(s3, f"edited/{DAY}/")
        images = [key for key in found if not key.split("/")[2].startswith("_manifest")]
        assert sorted(images) == sorted(f"edited/{DAY}/{stem.split('/', 2)[2]}.png" for stem in stems)
        waited = [
            w for run_id in ("run-4-scheduled", "run-4-backfill") for w in waits_in_triggerer(cluster, run_id)
        ]
        assert waited, "no edit of either DAG waited for the other's claim"
        control.configure(latency=EMULATOR_LATENCY)
        cluster_report(
            f"run 4: the scheduled DAG started while a backfill over the same 24 images was paying: "
            f"{stats['posts']} POSTs, both runs green; {len(waited)} edits waited in the triggerer "
            f"({min(waited):.0f} to {max(waited):.0f} s) for the other DAG's claim, and the triggerer "
            f"was restarted with {restarted.get('waiting', 0)} of them waiting"
        )


def test_run_5_a_backfill_behind_a_gateway_that_cuts_stops_after_a_few_calls(cluster, cluster_report):
    with failure_names_logs(cluster):
        s3 = s3_client(cluster)
        seed(s3, "cut/", 100)
        control = emulator(cluster)
        control.reset()
        control.configure(latency=3)
        pool = 4
        cluster.airflow("pools", "set", "bettertoken", str(pool), "BetterToken paid image edits")
        cluster.restart_gateway(read_timeout=1)  # shorter than an edit, as ALB's 60 s is for 1-3 minutes
        try:
            cluster.trigger(DAG_ID, "run-5", conf("cut/", "cut-edited/"))
            state = cluster.wait_for_run(DAG_ID, "run-5", timeout=420)
        finally:
            cluster.restart_gateway(read_timeout=60)
            cluster.airflow("pools", "set", "bettertoken", str(SLOTS), "BetterToken paid image edits")
            control.configure(latency=EMULATOR_LATENCY)

        assert state == "failed"
        posts = control.stats()["posts"]
        # At most 2 calls for each edit that ran before the run stopped: the cut edits, and those in
        # flight beside them in the pool.
        assert 2 * CUT_STREAK_LIMIT <= posts <= 2 * (CUT_STREAK_LIMIT + pool - 1)
        manifest = run_manifest(outputs(s3, "cut-edited/"), "cut-edited/", "run-5")
        spend = manifest["spend"]
        assert (spend["posts"], spend["images_stored"], manifest["counts"]["failed"]) == (posts, 0, 100)
        assert spend["stopped_by_run"] >= 100 - (CUT_STREAK_LIMIT + pool - 1)
        cluster_report(
            f"run 5: 100 images behind a gateway that cuts at 1 s, pool of {pool}: {posts} POSTs in all "
            f"(before the spend ledger: 1,200), {spend['stopped_by_budget']} edits stopped by their budget, "
            f"{spend['stopped_by_run']} by the run's breaker; the run failed"
        )
