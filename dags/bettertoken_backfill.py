"""A backfill over an image set: edit every image under a prefix, one paid call per mapped task.

Every edit runs in the ``bettertoken`` pool, which caps the paid calls in flight; create it once:

    airflow pools set bettertoken 4 "BetterToken paid image edits"

Each run plans only the images whose output does not exist yet, at most ``max_edits_per_run`` of
them. With ``until_done`` on, a run that made progress triggers the next run with the same conf
until nothing remains, so one trigger edits a whole catalog:

    airflow dags trigger bettertoken_backfill --conf '{"until_done": true, "max_edits_per_run": 500}'

The runs of a chain share a record under ``_bettertoken/chains/``: the first run lists the
catalog once, every later run lists only what comes after the keys settled before it. Edits
that failed for good are not planned again; ``retry_failed`` plans them once more. The run
records itself in ``_manifests/<run id>.json`` next to the outputs, and ``_manifest.json`` sums
every run. A run in which any edit failed ends ``failed``. Over a date range, with ``by_date``
on, each run takes the day's sub-prefix:

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
from airflow_bettertoken.operators.next_chunk import BetterTokenNextChunkOperator
from airflow_bettertoken.protocol.wire import SIZES

# The day a by_date run works on: the day its first chunk pinned in the conf, or the run's own date
# (a run triggered without a logical date has no `ds`: its run_after stands in).
THE_DAY = "(params.day or (dag_run.logical_date or dag_run.run_after).strftime('%Y-%m-%d'))"
DAY = "{{ " + THE_DAY + " ~ '/' if params.by_date else '' }}"

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
        "day": Param(
            "", type="string", description="With by_date: the day to edit; empty for the run's date"
        ),
        "prompt": Param("Put the product on a plain white background", type="string", minLength=1),
        "size": Param("auto", enum=list(SIZES)),
        "max_edits_per_run": Param(500, type="integer", minimum=1, maximum=1024),
        "until_done": Param(
            False, type="boolean", description="Trigger the next run until every image is done"
        ),
        "retry_failed": Param(
            False,
            type="boolean",
            description="Plan again the edits that failed for good in earlier runs of the chain",
        ),
    },
) as dag:
    source = "s3://{{ params.in_bucket }}/{{ params.source_prefix }}" + DAY
    dest = "s3://{{ params.out_bucket }}/{{ params.dest_prefix }}" + DAY
    images = BetterTokenListImagesOperator(
        task_id="list_images",
        source_prefix=source,
        dest_prefix=dest,
        max_edits="{{ params.max_edits_per_run }}",
        replan_failed="{{ params.retry_failed }}",
    )
    edits = BetterTokenImageEditOperator.partial(
        task_id="edit_image",
        prompt="{{ params.prompt }}",
        size="{{ params.size }}",
        pool="bettertoken",
        retries=2,
        retry_delay=timedelta(seconds=30),
    ).expand_kwargs(images.output)
    next_chunk = BetterTokenNextChunkOperator(
        task_id="next_chunk",
        edits=images.output,
        results=edits.output,
        until_done="{{ params.until_done }}",
        conf_updates={"day": "{{ " + THE_DAY + " }}"},
    )
    manifest = BetterTokenManifestOperator(
        task_id="write_manifest",
        edits=images.output,
        results=edits.output,
        manifest_uri=dest + "_manifest.json",
        next_chunk_task_id="next_chunk",
        trigger_rule="all_done",
    )
    edits >> next_chunk >> manifest
