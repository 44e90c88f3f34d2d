"""``make bench``, table scale: planning 100,000 rows of a table, and the row planner on moto.

1. Planning: a CSV and a JSON Lines table of 100,000 rows (a template prompt per row, half of the
   outputs done), read as ``storage/tables.py`` streams it, planned by ``RowPlanner`` and written as
   the plan file (to a temporary file; the upload is stubbed). CPU time (median of 5), and peak memory
   measured apart with tracemalloc, since tracing slows the CPU figure.
2. The row planner as a task runs it, against moto's S3 server on loopback through a proxy that counts
   every request: a 20,000-row CSV table, half of it done. Wall time, CPU seconds of this process (moto
   runs in it too, so this is an upper bound), peak RSS, and requests by kind.

The figures go to RESULTS.md, under their own heading; goals are reported, not asserted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import resource
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
MARKER = "## Table scale"
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bettertoken-bench-"))
sys.path.insert(0, str(ROOT))

from airflow_bettertoken.protocol.rows import RowSpec  # noqa: E402
from airflow_bettertoken.storage.locations import S3Location  # noqa: E402
from airflow_bettertoken.storage.row_planning import RowPlanner  # noqa: E402
from airflow_bettertoken.storage.s3_io import ObjectRead, Presence, PutResult  # noqa: E402
from airflow_bettertoken.storage.table_plan import write_plan  # noqa: E402
from airflow_bettertoken.storage.tables import read_rows  # noqa: E402

COLOURS = ("red", "green", "blue", "ochre")
SPEC = RowSpec(
    dest_prefix="s3://out/edited/",
    prompt_template="Recolour the ${product} in ${colour}, keep the background",
    size_column="size",
)


def table_rows(count: int) -> list[dict]:
    return [
        {
            "key": f"sku-{n:06}",
            "source": f"s3://in/catalog/dept-{n % 40}/item-{n:06}.jpg",
            "product": f"product {n % 97}",
            "colour": COLOURS[n % 4],
            "size": "1024x1024" if n % 3 else "",
        }
        for n in range(count)
    ]


def as_csv(rows: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def as_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


class TableIO:
    """The two S3IO methods planning uses, without S3: the table from memory, the upload dropped."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def open(self, location: S3Location):
        return ObjectRead(Presence.FOUND, etag='"bench"'), io.BytesIO(self.data)

    def upload_file(self, path: str, location: S3Location, *, if_none_match: bool) -> PutResult:
        return PutResult(True, '"bench"')


def plan(data: bytes, table_format: str, done: set[str]):
    planner = RowPlanner(SPEC, 1000, done.intersection)
    source = read_rows(TableIO(data), S3Location("in", "t"), table_format)
    write_plan(TableIO(data), S3Location("out", "plan.jsonl"), planner.plan(source))
    return planner.row_counts()


def measure_planning(table_format: str, count: int = 100_000) -> dict:
    rows = table_rows(count)
    data = as_csv(rows) if table_format == "csv" else as_jsonl(rows)
    done = {f"s3://out/edited/sku-{n:06}.png" for n in range(0, count, 2)}
    del rows
    plan(data[:50_000], table_format, done)  # warm-up
    cpu = []
    for _ in range(5):
        started = time.process_time()
        counts = plan(data, table_format, done)
        cpu.append(time.process_time() - started)
    tracemalloc.start()
    plan(data, table_format, done)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"rows": count, "cpu_s": statistics.median(cpu), "peak_mb": peak / 1e6, "counts": counts}


def measure_on_moto(count: int = 20_000) -> dict:
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

        from airflow_bettertoken.operators.list_rows import BetterTokenListRowsOperator

        s3 = S3Hook(aws_conn_id="aws_default").get_conn()
        for bucket in ("bench-in", "bench-out"):
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket="bench-in", Key="tables/products.csv", Body=as_csv(table_rows(count)))
        done = [f"edited/sku-{n:06}.png" for n in range(0, count, 2)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda key: s3.put_object(Bucket="bench-out", Key=key, Body=b"x"), done))
        proxy.requests.clear()
        op = BetterTokenListRowsOperator(
            task_id="plan_rows",
            table_uri="s3://bench-in/tables/products.csv",
            dest_prefix="s3://bench-out/edited/",
            prompt_template=SPEC.prompt_template,
            size_column="size",
            preflight=False,
        )
        xcoms: dict = {}
        ti = SimpleNamespace(
            dag_id="bench",
            run_id="bench",
            xcom_push=lambda key, value: xcoms.__setitem__(key, value),
        )
        started, cpu = time.monotonic(), time.process_time()
        edits = op.execute({"ti": ti})
        wall, cpu = time.monotonic() - started, time.process_time() - cpu
    finally:
        proxy.stop()
        moto.stop()
    kinds: dict[str, int] = {}
    for method, path in proxy.requests:
        kind = "LIST" if method == "GET" and "list-type=2" in path else method
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "rows": count,
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "requests": kinds,
        "planned": len(edits),
        "counts": xcoms["counts"],
    }


def main() -> None:
    figures = {fmt: measure_planning(fmt) for fmt in ("csv", "jsonl")}
    for fmt, found in figures.items():
        print(
            f"Planning {found['rows']:,} rows ({fmt}): {found['cpu_s']:.3f} s CPU, peak "
            f"{found['peak_mb']:.1f} MB (goal: < 1 s, < 100 MB); {found['counts']}"
        )
    moto = measure_on_moto()
    requests = ", ".join(f"{n} {kind}" for kind, n in sorted(moto["requests"].items()))
    print(
        f"Row planner on moto, {moto['rows']:,} rows: {moto['wall_s']:.2f} s wall, "
        f"{moto['cpu_s']:.2f} s CPU, peak RSS {moto['rss_mb']:.0f} MB, {requests}, {moto['planned']} planned"
    )
    rows = f"{figures['csv']['rows']:,}"
    section = [
        MARKER,
        "",
        f"From `benchmarks/table.py` (part of `make bench`) on {time.strftime('%Y-%m-%d')}, same machine.",
        "",
        "| figure | result | goal |",
        "|---|---|---|",
        *(
            f"| planning {rows} rows of {fmt.upper()} (half done), plan file included: CPU, median of 5 "
            f"| {found['cpu_s']:.3f} s | < 1 s |"
            for fmt, found in figures.items()
        ),
        *(
            f"| planning {rows} rows of {fmt.upper()}: peak memory (tracemalloc) | {found['peak_mb']:.1f} MB "
            "| < 100 MB |"
            for fmt, found in figures.items()
        ),
        f"| the row planner on moto, {moto['rows']:,}-row CSV, half done: wall | {moto['wall_s']:.2f} s | |",
        f"| the same: CPU of the process, moto's server included | {moto['cpu_s']:.2f} s | |",
        f"| the same: peak RSS of the process, moto and the 100,000-row runs included | "
        f"{moto['rss_mb']:.0f} MB | |",
        f"| the same: S3 requests | {requests} | "
        "a GET, LISTs of the outputs, the PUTs of the plan and the chain record |",
        "",
        "The tables stream: neither the table nor the plan file is held whole, only the chunk's edits",
        "and the set of existing outputs (one LIST of `dest_prefix`).",
        "",
    ]
    results = HERE / "RESULTS.md"
    existing = results.read_text() if results.exists() else ""
    head, _, rest = existing.partition(MARKER)
    tail = rest[rest.find("\n## ") :] if "\n## " in rest else ""
    results.write_text(head.rstrip() + "\n\n" + "\n".join(section) + tail)
    print(f"Wrote the table figures to {results}")


if __name__ == "__main__":
    main()
