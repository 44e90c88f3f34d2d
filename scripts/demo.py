"""``make demo``: run the example DAG end to end against the local emulator and a local S3.

With BETTERTOKEN_API_KEY set (and optionally BETTERTOKEN_BASE_URL), the edits go to the
real service instead; S3 stays local. The outputs are copied to ./demo-output/.
"""

from __future__ import annotations

import os
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

import boto3  # noqa: E402  (the demo seeds its local S3 directly, as a user would)
import pendulum  # noqa: E402

from airflow_bettertoken.emulator.samples import sample_image  # noqa: E402
from airflow_bettertoken.emulator.sandbox import LocalSandbox, return_values  # noqa: E402

IN_BUCKET, OUT_BUCKET = "bettertoken-in", "bettertoken-out"
SAMPLES = {"mug.png": (480, 480), "shoes/left.jpg": (640, 400), "lamp.webp": (360, 540)}


def seed_references(s3, day: str) -> None:
    for bucket in (IN_BUCKET, OUT_BUCKET):
        s3.create_bucket(Bucket=bucket)
    for seed, (name, (width, height)) in enumerate(SAMPLES.items()):
        data = sample_image(width, height, name.rsplit(".", 1)[1], seed)
        s3.put_object(Bucket=IN_BUCKET, Key=f"incoming/{day}/{name}", Body=data)
    print(f"Put {len(SAMPLES)} reference images under s3://{IN_BUCKET}/incoming/{day}/")


def print_table(rows: list[dict]) -> None:
    columns = ("output", "requested", "real size", "bytes", "attempts", "skipped")
    lines = [
        (
            r["output_uri"],
            r["requested_size"],
            f"{r['width']}x{r['height']}",
            str(r["bytes"]),
            str(r["attempts"]),
            "yes" if r["skipped"] else "no",
        )
        for r in rows
    ]
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(columns)]
    for line in (columns, tuple("-" * w for w in widths), *lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))


def main() -> int:
    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    from bettertoken_scheduled_edit import dag  # from dags/, on sys.path below

    api_key = os.environ.get("BETTERTOKEN_API_KEY")
    day = pendulum.today("UTC").to_date_string()
    with LocalSandbox() as sandbox:
        base_url = os.environ.get("BETTERTOKEN_BASE_URL") if api_key else None
        print("Editing with", "the real BetterToken service" if api_key else "the local emulator")
        s3 = boto3.client(
            "s3",
            endpoint_url=sandbox.s3_endpoint,
            aws_access_key_id="sandbox",
            aws_secret_access_key="sandbox-secret",
            region_name="us-east-1",
        )
        seed_references(s3, day)
        with sandbox.connections(base_url=base_url, api_key=api_key):
            run = dag.test(logical_date=pendulum.parse(day))
        print(f"\nDAG {dag.dag_id}: run {run.state}\n")
        rows = return_values(dag.dag_id, run.run_id, "edit_image")
        print_table(rows)
        OUTPUT_DIR.mkdir(exist_ok=True)
        for row in rows:
            target = OUTPUT_DIR / row["key"].replace("/", "__")
            target.write_bytes(s3.get_object(Bucket=row["bucket"], Key=row["key"])["Body"].read())
        print(f"\nCopied {len(rows)} PNGs to {OUTPUT_DIR}/")
    return 0 if run.state == "success" and len(rows) == len(SAMPLES) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "dags"))
    sys.exit(main())
