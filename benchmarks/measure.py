"""One measurement in a fresh process: ``python benchmarks/measure.py IMPL SCOPE``.

IMPL is ``ours`` or ``baseline``; SCOPE is ``hook`` (the API call and decode) or ``operator``
(also the S3 read of the reference and the S3 upload). The environment names the servers.
After a warm-up call, the peak RSS is reset (``/proc/self/clear_refs``), one call is made, and
the growth of the peak over the RSS before the call is printed with CPU and wall seconds, as JSON.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import uuid
from types import SimpleNamespace

IN_BUCKET, OUT_BUCKET, REFERENCE_KEY = "bench-in", "bench-out", "reference.jpg"


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def s3_client():
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=os.environ["BENCH_S3"],
        aws_access_key_id="bench",
        aws_secret_access_key="bench-secret",
        region_name="us-east-1",
    )


def baseline(scope: str):
    """What a user would write by hand in a PythonOperator: the openai SDK, base64, boto3.

    In the operator scope it makes its clients in each call, as each task would.
    """
    import base64

    import openai

    with open(os.environ["BENCH_REFERENCE"], "rb") as handle:
        local_reference = handle.read()
    hook_client = openai.OpenAI(api_key="bench-key", base_url=os.environ["BENCH_API"], max_retries=0)

    def call():
        client, s3 = hook_client, None
        reference = local_reference
        if scope == "operator":
            client = openai.OpenAI(api_key="bench-key", base_url=os.environ["BENCH_API"], max_retries=0)
            s3 = s3_client()
            reference = s3.get_object(Bucket=IN_BUCKET, Key=REFERENCE_KEY)["Body"].read()
        result = client.images.edit(
            model="gpt-image-2", image=("reference.jpg", reference, "image/jpeg"), prompt="bench", size="auto"
        )
        png = base64.b64decode(result.data[0].b64_json)
        if s3 is not None:
            s3.put_object(Bucket=OUT_BUCKET, Key="baseline.png", Body=png, ContentType="image/png")
        return png

    return call


def ours(scope: str):
    os.environ["AIRFLOW_CONN_BETTERTOKEN_DEFAULT"] = json.dumps(
        {"conn_type": "bettertoken", "host": os.environ["BENCH_API"], "password": "bench-key"}
    )
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
        {
            "conn_type": "aws",
            "login": "bench",
            "password": "bench-secret",
            "extra": {"endpoint_url": os.environ["BENCH_S3"], "region_name": "us-east-1"},
        }
    )
    if scope == "hook":
        from airflow_bettertoken.hooks.bettertoken import BetterTokenHook

        hook = BetterTokenHook()
        with open(os.environ["BENCH_REFERENCE"], "rb") as handle:
            reference = handle.read()
        return lambda: hook.edit_image("bench", [("reference.jpg", reference)])

    from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator

    def call():
        # A fresh operator and task instance each time, as each task is; "replace" makes every call
        # write, and a task instance of its own keeps the spend ledger from counting them as one edit.
        ti = SimpleNamespace(
            dag_id="bench", task_id="edit", run_id=f"bench-{uuid.uuid4().hex}", map_index=-1, try_number=1
        )
        ti.xcom_push = lambda key, value: None
        context = {"ti": ti}
        op = BetterTokenImageEditOperator(
            task_id="edit",
            prompt="bench",
            source=f"s3://{IN_BUCKET}/{REFERENCE_KEY}",
            dest=f"s3://{OUT_BUCKET}/ours.png",
            if_exists="replace",
        )
        return op.execute(context)

    return call


def main() -> None:
    impl, scope = sys.argv[1], sys.argv[2]
    call = (ours if impl == "ours" else baseline)(scope)
    call()  # warm-up: imports, connections, pools
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS
    rss_before = status_kib("VmRSS")
    cpu, wall = time.process_time(), time.perf_counter()
    result = call()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = status_kib("VmHWM")
    del result
    print(json.dumps({"cpu_s": cpu, "wall_s": wall, "peak_growth_bytes": (peak - rss_before) * 1024}))


if __name__ == "__main__":
    main()
