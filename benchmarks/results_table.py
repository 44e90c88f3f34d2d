"""``make bench``, the results table of a 100,000-row table: memory and time to write it.

A late run of a table's chain: its plan file holds 100,000 rows, 99,000 of them ``done`` in earlier
runs (each looked up in the previous ``latest`` table of 100,000 rows and carried over) and one chunk
of 1,000 edited in this run (900 made, 100 failed). The run reads the plan and the previous table from
S3, writes its table as JSON Lines (and Parquet, with pyarrow), and uploads it: create-only, then copied
over ``latest``. Measured twice, with and without Parquet:

- wall and CPU seconds, in a pass of its own (tracemalloc slows Python's allocations);
- tracemalloc's peak (Python's allocations), the peak RSS growth (``VmHWM``, which also counts
  pyarrow's buffers and SQLite's cache), and pyarrow's own peak.

moto's S3 server runs in another process, so that the objects it keeps count in neither figure.
The figures go to RESULTS.md under their own heading; goals are reported, not asserted.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_bettertoken.storage.locations import S3Location

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MARKER = "## Results table"
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="bettertoken-bench-"))
sys.path.insert(0, str(ROOT))

SIZES, CHUNK, FAILED = (30_000, 100_000), 1_000, 100
BUCKET = "bench-out"


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def start_moto() -> subprocess.Popen:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
        {
            "conn_type": "aws",
            "login": "bench",
            "password": "bench-secret",
            "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
    )
    return server


def key(n: int) -> str:
    return f"sku-{n:06}"


def dest(n: int) -> str:
    return f"s3://{BUCKET}/products/{key(n)}.png"


def plan(rows: int, state_of) -> Iterator:
    from airflow_bettertoken.storage.table_plan import PlanRow

    for n in range(rows):
        yield PlanRow(
            key(n),
            n + 2,
            state_of(n),
            dest(n),
            f"Put the product {key(n)} on a plain white background, keep its shadow",
            "1024x1024",
            (f"s3://bench-in/products/{key(n)}.jpg",),
        )


def xcom(n: int) -> dict:
    from airflow_bettertoken.protocol.result import EditXCom

    made = EditXCom(
        output_uri=dest(n),
        width=1024,
        height=1024,
        requested_size="1024x1024",
        nbytes=1_500_000,
        sha256=f"{n:064x}",
        model="gpt-image-2",
        source_uris=[f"s3://bench-in/products/{key(n)}.jpg"],
        calls=1,
        billed_calls=1,
    )
    return {**made.dump(), "cost": "0.0421", "currency": "USD"}


def failure(n: int) -> dict:
    from airflow_bettertoken.protocol.result import EditFailure

    return EditFailure(reason="HTTP 429", error="BetterTokenRateLimitError", dest=dest(n)).dump()


def places(rows: int) -> tuple[S3Location, S3Location]:
    """The tables' prefix and the run's plan file, for a table of ``rows``."""
    from airflow_bettertoken.storage.locations import S3Location
    from airflow_bettertoken.storage.table_plan import table_plan_location

    return S3Location(BUCKET, f"products-{rows}/_results/"), table_plan_location(
        BUCKET, "bench", f"run-{rows}"
    )


def seed(io, rows: int) -> dict:
    """The earlier runs' latest table, every row made; and this run's plan file."""
    from airflow_bettertoken.storage.results_table import RunOutcomes, results_locations
    from airflow_bettertoken.storage.results_writer import write_results_table
    from airflow_bettertoken.storage.table_plan import write_plan

    prefix, plan_at = places(rows)
    everything = RunOutcomes.from_xcom([xcom(n) for n in range(rows)], [])
    write_results_table(io, plan(rows, lambda n: "planned"), everything, prefix, "earlier", parquet=False)
    write_plan(io, plan_at, plan(rows, lambda n: "planned" if n >= rows - CHUNK else "done"))
    latest = io.head(results_locations(prefix, "", ".jsonl")[1])
    return {"plan": io.head(plan_at).content_length, "jsonl": latest.content_length}


def the_run(io, rows: int, run_id: str, parquet: bool):
    """What the results table task does: read this run's XCom, stream the plan, write the table."""
    from airflow_bettertoken.storage.results_table import RunOutcomes
    from airflow_bettertoken.storage.results_writer import write_results_table
    from airflow_bettertoken.storage.table_plan import read_plan

    prefix, plan_at = places(rows)
    chunk = range(rows - CHUNK, rows)
    run = RunOutcomes.from_xcom(
        [xcom(n) if n < rows - FAILED else None for n in chunk],
        [failure(n) for n in chunk if n >= rows - FAILED],
    )
    return write_results_table(io, read_plan(io, plan_at), run, prefix, run_id, parquet=parquet)


def measure_here(rows: int, parquet: bool, traced: bool) -> dict:
    """One run in this fresh process, timed, or traced: tracemalloc and the peak RSS growth."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from airflow_bettertoken.storage.s3_io import S3IO

    io = S3IO(S3Hook(aws_conn_id="aws_default"))
    io.head(places(rows)[1])  # the client made, the connection open
    if parquet:
        import pyarrow.parquet  # imported before the run, as the task's imports are
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS
    rss_before = status_kib("VmRSS")
    if traced:
        tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    written = the_run(io, rows, f"{'traced' if traced else 'timed'}-{parquet}", parquet)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    figures = {"rows": written.rows, "counts": written.counts, "wall_s": wall, "cpu_s": cpu}
    if traced:
        figures["traced_peak"] = tracemalloc.get_traced_memory()[1]
        figures["rss_growth"] = (status_kib("VmHWM") - rss_before) * 1024
        if parquet:
            import pyarrow as pa

            figures["arrow_peak"] = pa.default_memory_pool().max_memory()
    return figures


def measure(rows: int, parquet: bool) -> dict:
    figures: dict = {"parquet": parquet, "arrow_peak": None}
    for traced in (False, True):
        args = [sys.executable, __file__, "--measure", str(rows), str(int(parquet)), str(int(traced))]
        done = subprocess.run(args, capture_output=True, text=True, check=True, env=os.environ)
        figures.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return figures


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        rows, parquet, traced = (int(arg) for arg in sys.argv[2:5])
        print(json.dumps(measure_here(rows, bool(parquet), bool(traced))))
        return
    server = start_moto()
    try:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from airflow_bettertoken.storage.results_writer import has_parquet
        from airflow_bettertoken.storage.s3_io import S3IO

        io = S3IO(S3Hook(aws_conn_id="aws_default"))
        io.client.create_bucket(Bucket=BUCKET)
        sizes = {rows: seed(io, rows) for rows in SIZES}
        formats = [False, *([True] if has_parquet() else [])]
        results = [measure(rows, parquet) for rows in SIZES for parquet in formats]
    finally:
        server.terminate()
        server.wait()
    write_results(results, sizes[max(SIZES)])


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def write_results(results: list[dict], sizes: dict) -> None:
    def written_as(r: dict) -> str:
        return "JSON Lines + Parquet" if r["parquet"] else "JSON Lines"

    for r in results:
        print(
            f"Results table of {r['rows']:,} rows ({written_as(r)}): {r['wall_s']:.1f} s wall, "
            f"{r['cpu_s']:.1f} s CPU; tracemalloc peak {mib(r['traced_peak'])}, RSS growth "
            f"{mib(r['rss_growth'])}, pyarrow peak {mib(r['arrow_peak'])}; counts {r['counts']}"
        )
    rows = max(SIZES)
    section = [
        MARKER,
        "",
        f"From `benchmarks/results_table.py` (part of `make bench`) on {time.strftime('%Y-%m-%d')},",
        "same machine, moto's S3 server in another process. A late run of a table's chain: all rows but",
        f"one chunk done earlier (each carried over from the previous latest table), {CHUNK:,} edited",
        f"in the run ({CHUNK - FAILED:,} made, {FAILED} failed). At {rows:,} rows the plan file is",
        f"{mib(sizes['plan'])} and the JSON Lines table {mib(sizes['jsonl'])}.",
        "",
        "| rows | written as | wall | CPU | tracemalloc peak | RSS growth | pyarrow peak |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['rows']:,} | {written_as(r)} | {r['wall_s']:.1f} s | {r['cpu_s']:.1f} s "
            f"| {mib(r['traced_peak'])} | {mib(r['rss_growth'])} | {mib(r['arrow_peak'])} |"
            for r in results
        ),
        "",
        "Each figure is one run in a fresh process: wall and CPU from a run without tracemalloc, the",
        "memory from a run with it (RSS growth: the peak over the RSS before the run, so it also counts",
        "pyarrow's buffers and SQLite's cache). Both sizes are past the fixed buffers (4 MiB range reads",
        "of the plan and the previous table, 8 MiB upload parts), so the two rows of each format show how",
        "memory grows with the rows: the previous table is looked up in a SQLite file and Parquet is",
        "written 5,000 rows a row group.",
        "",
    ]
    results_file = HERE / "RESULTS.md"
    existing = results_file.read_text() if results_file.exists() else ""
    head, _, rest = existing.partition(MARKER)
    tail = rest[rest.find("\n## ") :] if "\n## " in rest else ""
    results_file.write_text(head.rstrip() + "\n\n" + "\n".join(section) + tail)
    print(f"Wrote the results table figures to {results_file}")


if __name__ == "__main__":
    main()
