"""A scheduled edit: every day, edit that day's reference images with gpt-image-2.

Reads ``s3://<in_bucket>/incoming/<ds>/`` and writes ``s3://<out_bucket>/edited/<ds>/``, keeping each
image's relative path. Only images without an output are edited, so a re-triggered day pays for
nothing it already made; a day with no new images skips the edit task. The manifest task records
the day in ``edited/<ds>/_manifests/`` and fails the run if any edit failed.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_bettertoken import (
    SIZES,
    BetterTokenImageEditOperator,
    BetterTokenListImagesOperator,
    BetterTokenManifestOperator,
)

with DAG(
    dag_id="bettertoken_scheduled_edit",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["bettertoken", "example"],
    params={
        "in_bucket": Param("bettertoken-in", type="string"),
        "out_bucket": Param("bettertoken-out", type="string"),
        "prompt": Param("Turn this photo into a clean studio product shot", type="string", minLength=1),
        "size": Param("auto", enum=list(SIZES)),
    },
) as dag:
    todays_images = BetterTokenListImagesOperator(
        task_id="list_todays_images",
        source_prefix="s3://{{ params.in_bucket }}/incoming/{{ ds }}/",
        dest_prefix="s3://{{ params.out_bucket }}/edited/{{ ds }}/",
        allow_empty=True,  # a day with no new images is normal: the edit task is skipped
    )
    edits = BetterTokenImageEditOperator.partial(
        task_id="edit_image",
        prompt="{{ params.prompt }}",
        size="{{ params.size }}",
        retries=2,
    ).expand_kwargs(todays_images.output)
    BetterTokenManifestOperator(
        task_id="write_manifest",
        edits=todays_images.output,
        results=edits.output,
        manifest_uri="s3://{{ params.out_bucket }}/edited/{{ ds }}/_manifest.json",
        trigger_rule="all_done",
    )
