"""A backfill over an image set: edit every image under a prefix, one paid call per mapped task.

Every edit runs in the ``bettertoken`` pool, which caps the paid calls in flight; create it once:

    airflow pools set bettertoken 4 "BetterToken paid image edits"

Reruns are safe: outputs that exist are skipped without a call. The last task writes
``_manifest.json`` next to the outputs. Over a date range, with ``by_date`` on, each run takes
the day's sub-prefix:

    airflow backfill create --dag-id bettertoken_backfill \\
        --from-date 2026-11-01 --to-date 2026-11-07 --dag-run-conf '{"by_date": true}'
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator
from airflow_bettertoken.operators.manifest import BetterTokenManifestOperator

DAY = "{{ ds ~ '/' if params.by_date else '' }}"

with DAG(
    dag_id="bettertoken_backfill",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["bettertoken", "example"],
    params={
        "in_bucket": Param("bettertoken-in", type="string"),
        "out_bucket": Param("bettertoken-out", type="string"),
        "source_prefix": Param("catalog/", type="string", pattern="^([^/].*/)?$"),
        "dest_prefix": Param("catalog-edited/", type="string", pattern="^[^/].*/$"),
        "by_date": Param(False, type="boolean"),
        "prompt": Param("Put the product on a plain white background", type="string", minLength=1),
        "size": Param("auto", type="string"),
    },
) as dag:
    source = "s3://{{ params.in_bucket }}/{{ params.source_prefix }}" + DAY
    dest = "s3://{{ params.out_bucket }}/{{ params.dest_prefix }}" + DAY
    images = BetterTokenListImagesOperator(task_id="list_images", source_prefix=source, dest_prefix=dest)
    edits = BetterTokenImageEditOperator.partial(
        task_id="edit_image",
        prompt="{{ params.prompt }}",
        size="{{ params.size }}",
        pool="bettertoken",
        retries=2,
        retry_delay=timedelta(seconds=30),
    ).expand_kwargs(images.output)
    BetterTokenManifestOperator(
        task_id="write_manifest",
        edits=images.output,
        results=edits.output,
        manifest_uri=dest + "_manifest.json",
        trigger_rule="all_done",
    )
