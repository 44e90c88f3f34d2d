"""``make bench``, catalog scale: planning from 100,000 listed keys, and re-listing a finished set on moto.

1. Planning: ``plan_pending`` over 100,000 source keys and 50,000 existing outputs, as the listing
   operator runs it after its LISTs. CPU time (median of 5), and peak memory measured apart with
   tracemalloc, since tracing slows the CPU figure.
2. A rerun of a finished 20,000-image set: the listing operator against moto's S3 server through a
   proxy that counts every request. Wall time and requests by kind.

The figures go to the end of RESULTS.md, under their own heading; goals are reported, not asserted.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MARKER = "## Catalog scale"
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bettertoken-bench-"))
sys.path.insert(0, str(ROOT))

from airflow_bettertoken.storage.listing import plan_pending  # noqa: E402
from airflow_bettertoken.storage.locations import S3Location  # noqa: E402


def catalog_keys(count: int) -> tuple[list[str], list[str]]:
    """``count`` sources in nested folders, and outputs for every other one."""
    sources = [f"catalog/dept-{n % 40}/aisle-{n % 97}/item-{n:06}.jpg" for n in range(count)]
    outputs = [f"edited/dept-{n % 40}/aisle-{n % 97}/item-{n:06}.png" for n in range(0, count, 2)]
    return sources, outputs


def plan(sources: list[str], outputs: list[str]):
    return plan_pending(
        sources,
        outputs,
        S3Location("in", "catalog/"),
        S3Location("out", "edited/"),
        only_pending=True,
        max_edits=1000,
    )


def measure_planning(count: int = 100_000) -> dict:
    sources, outputs = catalog_keys(count)
    plan(sources[:1000], outputs[:500])  # warm-up
    cpu = []
    for _ in range(5):
        started = time.process_time()
        result = plan(sources, outputs)
        cpu.append(time.process_time() - started)
    tracemalloc.start()
    plan(sources, outputs)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"keys": count, "cpu_s": statistics.median(cpu), "peak_mb": peak / 1e6, "counts": result.counts}


def measure_finished_rerun(count: int = 20_000) -> dict:
    from moto.server import ThreadedMotoServer

    from tests.integration.s3_fault_proxy import S3FaultProxy

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    proxy = S3FaultProxy(f"http://{host}:{port}").start()
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
        {
            "conn_type": "aws",
            "login": "bench",
            "password": "bench-secret",
            "extra": {"endpoint_url": proxy.endpoint, "region_name": "us-east-1"},
        }
    )
    try:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator

        s3 = S3Hook(aws_conn_id="aws_default").get_conn()
        for bucket in ("bench-in", "bench-out"):
            s3.create_bucket(Bucket=bucket)
        sources, _ = catalog_keys(count)
        outputs = [key.replace("catalog/", "edited/", 1).replace(".jpg", ".png") for key in sources]
        puts = [("bench-in", key) for key in sources] + [("bench-out", key) for key in outputs]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda put: s3.put_object(Bucket=put[0], Key=put[1], Body=b"x"), puts))
        proxy.requests.clear()
        op = BetterTokenListImagesOperator(
            task_id="list",
            source_prefix="s3://bench-in/catalog/",
            dest_prefix="s3://bench-out/edited/",
            preflight=False,
        )
        xcoms: dict = {}
        ti = SimpleNamespace(xcom_push=lambda key, value: xcoms.__setitem__(key, value))
        started = time.monotonic()
        edits = op.execute({"ti": ti})
        wall = time.monotonic() - started
    finally:
        proxy.stop()
        moto.stop()
    kinds: dict[str, int] = {}
    for method, path in proxy.requests:
        kind = "LIST" if method == "GET" and "list-type=2" in path else method
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "images": count,
        "wall_s": wall,
        "requests": kinds,
        "planned": len(edits),
        "counts": xcoms["counts"],
    }


def main() -> None:
    planning = measure_planning()
    keys, cpu, peak = f"{planning['keys']:,}", f"{planning['cpu_s']:.3f} s", f"{planning['peak_mb']:.1f} MB"
    print(f"Planning {keys} keys: {cpu} CPU, peak {peak} (goal: < 1 s, < 100 MB); {planning['counts']}")
    rerun = measure_finished_rerun()
    images, wall = f"{rerun['images']:,}", f"{rerun['wall_s']:.2f} s"
    requests = ", ".join(f"{n} {kind}" for kind, n in sorted(rerun["requests"].items()))
    print(
        f"Rerun of a finished {images}-image set: {wall} wall, {requests}, {rerun['planned']} edits planned"
    )
    section = [
        MARKER,
        "",
        f"From `benchmarks/catalog.py` (part of `make bench`) on {time.strftime('%Y-%m-%d')}, same machine.",
        "",
        "| figure | result | goal |",
        "|---|---|---|",
        f"| planning {keys} listed keys (half done): CPU, median of 5 | {cpu} | < 1 s |",
        f"| planning {keys} listed keys: peak memory (tracemalloc) | {peak} | < 100 MB |",
        f"| rerun of a finished {images}-image set on moto: wall | {wall} | |",
        f"| rerun of a finished {images}-image set: S3 requests | {requests} | LISTs only, about 2 x 20 |",
        f"| rerun of a finished {images}-image set: edits planned, edit tasks | {rerun['planned']}, 0 | 0 |",
        "",
        "The rerun ran without the preflight, which adds one `GET /models` to the API and three S3 requests",
        "(the bucket, a probe written and deleted) whatever the size of the set.",
        "",
    ]
    results = HERE / "RESULTS.md"
    before = results.read_text().partition(MARKER)[0].rstrip() + "\n\n" if results.exists() else ""
    results.write_text(before + "\n".join(section))
    print(f"Wrote the catalog figures to {results}")


if __name__ == "__main__":
    main()
