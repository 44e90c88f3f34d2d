"""``make demo``: run the example DAG end to end against the local emulator and a local S3.

With BETTERTOKEN_API_KEY set (and optionally BETTERTOKEN_BASE_URL), the edits go to the
real service instead; S3 stays local. The sources and outputs are copied to ./demo-output/, with
index.html showing them side by side: the gallery's view, as a page that opens from disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AIRFLOW_HOME = ROOT / ".demo" / "airflow-home"
OUTPUT_DIR = ROOT / "demo-output"
# Airflow reads its configuration when first imported: set it up before that.
os.environ.update(
    AIRFLOW_HOME=str(AIRFLOW_HOME),
    AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__LOGGING__LOGGING_LEVEL=os.environ.get("DEMO_LOG_LEVEL", "WARNING"),
)

import pendulum  # noqa: E402
from static_gallery import write_page  # noqa: E402

from airflow_bettertoken.testing.samples import sample_image  # noqa: E402
from airflow_bettertoken.testing.sandbox import LocalSandbox, return_values  # noqa: E402

IN_BUCKET, OUT_BUCKET = "bettertoken-in", "bettertoken-out"
SAMPLES = {"mug.png": (480, 480), "shoes/left.jpg": (640, 400), "lamp.webp": (360, 540)}
CATALOG = [
    f"{shelf}/item-{n}.{fmt}"
    for shelf in ("kitchen", "garden/tools")
    for n, fmt in enumerate(("jpg", "png", "webp"))
]


def put_samples(s3, prefix: str, names: dict[str, tuple[int, int]]) -> None:
    for seed, (name, (width, height)) in enumerate(names.items()):
        data = sample_image(width, height, name.rsplit(".", 1)[1], seed)
        s3.put_object(Bucket=IN_BUCKET, Key=f"{prefix}{name}", Body=data)
    print(f"Put {len(names)} reference images under s3://{IN_BUCKET}/{prefix}")


def print_table(rows: list[dict]) -> None:
    if not rows:
        print("No edit task ran: every image already has its output, so nothing was planned or paid.")
        return
    columns = ("output", "requested", "real size", "bytes", "calls", "skipped")
    lines = [
        (
            r["output_uri"],
            r["requested_size"],
            f"{r['width']}x{r['height']}",
            str(r["bytes"]),
            str(r["calls"]),
            "yes" if r["skipped"] else "no",
        )
        for r in rows
    ]
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(columns)]
    for line in (columns, tuple("-" * w for w in widths), *lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))


def airflow(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "airflow", *args], check=True, capture_output=True)


def run_dag(dag, **kwargs) -> tuple[str, list[dict]]:
    run = dag.test(**kwargs)
    print(f"\nDAG {dag.dag_id}: run {run.state}\n")
    rows = return_values(dag.dag_id, run.run_id, "edit_image")
    print_table(rows)
    if run.state != "success":
        raise SystemExit(f"{dag.dag_id} did not succeed")
    return run.run_id, rows


def main() -> int:
    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    airflow("db", "migrate")
    airflow("pools", "set", "bettertoken", "4", "BetterToken paid image edits")
    from bettertoken_backfill import dag as backfill  # from dags/, on sys.path below
    from bettertoken_scheduled_edit import dag as scheduled

    api_key = os.environ.get("BETTERTOKEN_API_KEY")
    day = pendulum.today("UTC").to_date_string()
    with LocalSandbox() as sandbox:
        base_url = os.environ.get("BETTERTOKEN_BASE_URL") if api_key else None
        print("Editing with", "the real BetterToken service" if api_key else "the local emulator")
        s3 = sandbox.s3_client()
        for bucket in (IN_BUCKET, OUT_BUCKET):
            s3.create_bucket(Bucket=bucket)
        put_samples(s3, f"incoming/{day}/", SAMPLES)
        put_samples(s3, "catalog/", {name: (400, 300) for name in CATALOG})
        with sandbox.connections(base_url=base_url, api_key=api_key):
            daily_run, daily = run_dag(scheduled, logical_date=pendulum.parse(day))
            # The backfill runs twice: the second run finds every output and pays for nothing.
            catalog_run, catalog = run_dag(backfill)
            _, rerun = run_dag(backfill)
        summary = json.loads(
            s3.get_object(Bucket=OUT_BUCKET, Key="catalog-edited/_manifest.json")["Body"].read()
        )
        latest = summary["latest_run"]
        print(
            f"\nManifest s3://{OUT_BUCKET}/catalog-edited/_manifest.json: {summary['runs']} runs, "
            f"{summary['images_done']} images done; the rerun planned {latest['counts']['planned']} edits "
            f"and paid for none"
        )
        shutil.rmtree(OUTPUT_DIR, ignore_errors=True)
        OUTPUT_DIR.mkdir()
        pages = [
            write_page(
                s3,
                OUTPUT_DIR,
                "index.html",
                backfill.dag_id,
                catalog_run,
                catalog,
                f"s3://{IN_BUCKET}/catalog/",
            ),
            write_page(
                s3,
                OUTPUT_DIR,
                "daily.html",
                scheduled.dag_id,
                daily_run,
                daily,
                f"s3://{IN_BUCKET}/incoming/{day}/",
            ),
        ]
        print(
            f"\nBefore and after, sources beside outputs: open {pages[0]} (and {pages[1].name}) in a browser"
        )
    rows = daily + catalog
    # The rerun plans nothing: every output exists, so no edit task runs and nothing is paid.
    return 0 if len(rows) == len(SAMPLES) + len(CATALOG) and rerun == [] else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "dags"))
    sys.exit(main())
