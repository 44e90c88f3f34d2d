"""``make bench``, the spend ledger: what it costs in S3 requests, and what a summary update costs.

1. S3 requests per edit: the edit operator against the emulator and moto's S3 server, through a
   proxy that counts every request, for a new edit (with the emulator answering at once, so no
   claim renewal falls inside the call), an edit whose output exists, and a second task that waits
   for the first one's claim.
2. A summary update at 1 and at 2,000 runs: ``write_manifests`` against moto, after 2,000 earlier
   runs were recorded. Requests and wall time.

The figures go to RESULTS.md under their own heading; goals are reported, not asserted.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MARKER = "## Spend ledger"
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bettertoken-bench-"))
sys.path.insert(0, str(ROOT))

# Measured at 53b7850, before the ledger, with the same proxy: a new edit HEADs its output, the
# bucket and its source, GETs the source, and PUTs the PNG; a skipped one HEADs its output. The
# summary update LISTed every run manifest and read each of them (a HEAD and a GET apiece).
BEFORE_NEW_EDIT = {"HEAD": 3, "GET": 1, "PUT": 1}
BEFORE_SKIPPED_EDIT = {"HEAD": 1}
BEFORE_SUMMARY_AT_1 = {"HEAD": 1, "LIST": 1, "GET": 1, "PUT": 2}
BEFORE_SUMMARY_AT_2000 = {"HEAD": 2000, "LIST": 2, "GET": 2000, "PUT": 2}


def kinds(requests: list[tuple[str, str]]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for method, path in requests:
        kind = "LIST" if method == "GET" and "list-type=2" in path else method
        counted[kind] = counted.get(kind, 0) + 1
    return counted


def text(counted: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counted.items())) + f" ({sum(counted.values())})"


class Bench:
    """The emulator, moto and the counting proxy, with the connections pointed at them."""

    def __enter__(self) -> Bench:
        from airflow_bettertoken.testing.sandbox import LocalSandbox
        from tests.integration.s3_fault_proxy import S3FaultProxy

        self.sandbox = LocalSandbox(connection_extra={"backoff_initial": 0.01}).start()
        self.proxy = S3FaultProxy(self.sandbox.s3_endpoint).start()
        env = self.sandbox.connection_env()
        env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(self.sandbox.aws_connection(self.proxy.endpoint))
        os.environ.update(env)
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        self.s3 = S3Hook(aws_conn_id="aws_default").get_conn()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proxy.stop()
        self.sandbox.stop()

    def counted(self, action) -> tuple[dict[str, int], float]:
        self.proxy.requests.clear()
        started = time.monotonic()
        action()
        return kinds(self.proxy.requests), time.monotonic() - started


def context(run_id: str) -> dict:
    from tests.conftest import TaskInstanceStub

    ti = TaskInstanceStub(dag_id="bench", task_id="edit", run_id=run_id, map_index=-1, try_number=1, xcoms={})
    return {"ti": ti}


def measure_edits(bench: Bench) -> dict[str, dict[str, int]]:
    from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
    from airflow_bettertoken.testing.samples import sample_image
    from tests.deferral import execute_deferrable

    for bucket in ("bench-in", "bench-out"):
        bench.s3.create_bucket(Bucket=bucket)
    bench.s3.put_object(Bucket="bench-in", Key="a.png", Body=sample_image(160, 120))
    bench.s3.put_object(Bucket="bench-in", Key="b.png", Body=sample_image(160, 120, seed=1))

    def edit(key: str, run_id: str) -> None:
        op = BetterTokenImageEditOperator(
            task_id="edit", prompt="p", source=f"s3://bench-in/{key}", dest="s3://bench-out/edited/"
        )
        execute_deferrable(op, context(run_id))

    new, _ = bench.counted(lambda: edit("a.png", "run-1"))
    skipped, _ = bench.counted(lambda: edit("a.png", "run-2"))
    return {"new": new, "skipped": skipped}


def measure_summary(bench: Bench, runs: int = 2000) -> dict[str, tuple[dict[str, int], float]]:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from airflow_bettertoken.storage.locations import S3Location
    from airflow_bettertoken.storage.run_manifest import RunManifest, write_manifests

    bench.s3.create_bucket(Bucket="bench-manifests")
    hook = S3Hook(aws_conn_id="aws_default")
    summary = S3Location("bench-manifests", "edited/_manifest.json")

    def manifest(number: int) -> RunManifest:
        document = {
            "dag_id": "bench",
            "run_id": f"run-{number}",
            "finished_at": f"2026-11-{1 + number // 100:02}T00:00:{number % 60:02}+00:00",
            "counts": {"planned": 500, "done": 500, "skipped": 0, "failed": 0},
            "spend": {"posts": 500, "paid": 500, "images_stored": 500},
            "usage": {"total_tokens": 575_000},
            "failures": [],
            "outputs": [
                {
                    "output_uri": f"s3://bench-manifests/edited/{number}-{i}.png",
                    "width": 1024,
                    "height": 1024,
                    "requested_size": "1024x1024",
                    "bytes": 1_500_000,
                    "sha256": "ab" * 32,
                    "skipped": False,
                }
                for i in range(500)
            ],
        }
        return RunManifest.load(document, "the benchmark's manifest")

    first_manifest = manifest(1)
    first = bench.counted(lambda: write_manifests(hook, summary, first_manifest))
    for number in range(2, runs):
        write_manifests(hook, summary, manifest(number))
    timings = []
    for number in range(runs, runs + 5):
        later = manifest(number)
        counted, wall = bench.counted(lambda m=later: write_manifests(hook, summary, m))
        timings.append(wall)
    return {"first": first, "later": (counted, statistics.median(timings))}


def main() -> None:
    with Bench() as bench:
        edits = measure_edits(bench)
        summary = measure_summary(bench)
    new, skipped = edits["new"], edits["skipped"]
    added = sum(new.values()) - sum(BEFORE_NEW_EDIT.values())
    print(f"S3 requests for a new edit: {text(new)}; before the ledger {text(BEFORE_NEW_EDIT)}")
    print(f"S3 requests for a skipped edit: {text(skipped)}; before {text(BEFORE_SKIPPED_EDIT)}")
    (first, first_wall), (later, later_wall) = summary["first"], summary["later"]
    print(f"Summary update at run 1: {text(first)}, {first_wall:.3f} s")
    print(f"Summary update at run 2,000 (median of 5): {text(later)}, {later_wall:.3f} s")
    section = [
        MARKER,
        "",
        f"From `benchmarks/spend.py` (part of `make bench`) on {time.strftime('%Y-%m-%d')}, same machine,",
        "moto's S3 server behind a proxy that counts every request.",
        "",
        "| figure | with the ledger | before (53b7850) |",
        "|---|---|---|",
        f"| S3 requests of a new edit (a call that answers at once) | {text(new)} "
        f"| {text(BEFORE_NEW_EDIT)} |",
        f"| S3 requests of an edit whose output exists | {text(skipped)} | {text(BEFORE_SKIPPED_EDIT)} |",
        f"| summary update at run 1: requests, wall | {text(first)}, {first_wall:.3f} s "
        f"| {text(BEFORE_SUMMARY_AT_1)} |",
        f"| summary update at run 2,000: requests, wall (median of 5) | {text(later)}, {later_wall:.3f} s "
        f"| {text(BEFORE_SUMMARY_AT_2000)}: it grew with the runs |",
        "",
        f"The ledger adds {added} requests to a new edit: a GET of the output's ledger and of the run's",
        "breaker before the call, a PUT to take the claim, a PUT that writes the call down before it is",
        "sent and one after it ends, and a PUT when the image is stored, which releases the claim. A call",
        "that stays open adds one renewal PUT every 30 s (`claim_seconds` / 3): four for a two-minute",
        "edit. At S3's list prices (PUT $0.005, GET $0.0004 per 1,000) that is about $0.00003 an edit.",
        "",
    ]
    results = HERE / "RESULTS.md"
    existing = results.read_text() if results.exists() else ""
    head, _, rest = existing.partition(MARKER)
    tail = rest[rest.find("\n## ") :] if "\n## " in rest else ""
    results.write_text(head.rstrip() + "\n\n" + "\n".join(section) + tail)
    print(f"Wrote the spend ledger figures to {results}")


if __name__ == "__main__":
    main()
