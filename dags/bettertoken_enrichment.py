"""An enrichment step in a data pipeline, scheduled on data rather than on time.

    bettertoken_incoming_producer
        --(asset bettertoken_incoming)--> bettertoken_enrichment
        --(alias bettertoken_edited_images: one event per PNG)--> bettertoken_edited_consumer

The producer stands for whatever lands new images in ``s3://<in_bucket>/stream/<batch>/``: here it
copies a few images from ``s3://<in_bucket>/<samples_prefix>`` into a new batch. The enrichment run
edits that batch into ``s3://<out_bucket>/enriched/<batch>/`` and reports every PNG it wrote as an
asset event, so a downstream DAG can be scheduled on edited images.
"""

from __future__ import annotations

import pendulum
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.sdk import DAG, Asset, AssetAlias, Param, task

from airflow_bettertoken import (
    BetterTokenImageEditOperator,
    BetterTokenListImagesOperator,
    BetterTokenManifestOperator,
)

INCOMING = Asset(name="bettertoken_incoming", uri="s3://bettertoken-in/stream/")
EDITED = AssetAlias(name="bettertoken_edited_images")
PARAMS = {
    "in_bucket": Param("bettertoken-in", type="string"),
    "out_bucket": Param("bettertoken-out", type="string"),
}

with DAG(
    dag_id="bettertoken_incoming_producer",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    tags=["bettertoken", "example"],
    params={
        **PARAMS,
        "samples_prefix": Param("samples/", type="string", pattern="^[^/].*/$"),
        "images": Param(3, type="integer", minimum=1, maximum=50),
    },
):

    @task(outlets=[INCOMING])
    def land_new_images(params=None, ts_nodash=None, outlet_events=None) -> str:
        """Copy a batch of images into the stream, and say where in the asset event."""
        bucket, prefix = params["in_bucket"], f"stream/{ts_nodash}/"
        s3 = S3Hook()
        samples = sorted(s3.list_keys(bucket_name=bucket, prefix=params["samples_prefix"]) or [])
        if not samples:
            raise ValueError(
                f"no images under s3://{bucket}/{params['samples_prefix']} to land; put some there"
            )
        for key in samples[: params["images"]]:
            s3.copy_object(key, prefix + key.rsplit("/", 1)[-1], bucket, bucket)
        uri = f"s3://{bucket}/{prefix}"
        outlet_events[INCOMING].extra = {"prefix": uri}
        return uri

    land_new_images()


with DAG(
    dag_id="bettertoken_enrichment",
    schedule=[INCOMING],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    max_active_runs=1,
    tags=["bettertoken", "example"],
    params={
        **PARAMS,
        "prompt": Param("Relight this photo as a bright studio shot", type="string", minLength=1),
    },
):

    @task(multiple_outputs=True)
    def new_batch(params=None, triggering_asset_events=None) -> dict[str, str]:
        """The batch the producer announced; with none or several, the whole stream (done images skip)."""
        stream = f"s3://{params['in_bucket']}/stream/"
        # Matched by name, not looked up by key: Airflow 3.0 and 3.1 cannot hash an Asset key here.
        events = [
            event
            for asset, asset_events in (triggering_asset_events or {}).items()
            if asset.name == INCOMING.name
            for event in asset_events
        ]
        prefixes = {event.extra.get("prefix") for event in events}
        source = prefixes.pop() if len(prefixes) == 1 and None not in prefixes else stream
        relative = source.removeprefix(stream)
        return {"source_prefix": source, "dest_prefix": f"s3://{params['out_bucket']}/enriched/{relative}"}

    batch = new_batch()
    images = BetterTokenListImagesOperator(
        task_id="list_new_images",
        source_prefix=batch["source_prefix"],
        dest_prefix=batch["dest_prefix"],
        allow_empty=True,  # a batch may hold nothing new: that run edits nothing and succeeds
    )
    edits = BetterTokenImageEditOperator.partial(
        task_id="edit_image", prompt="{{ params.prompt }}", outlets=[EDITED], retries=2
    ).expand_kwargs(images.output)
    BetterTokenManifestOperator(
        task_id="write_manifest",
        edits=images.output,
        results=edits.output,
        manifest_uri="{{ ti.xcom_pull(task_ids='new_batch', key='dest_prefix') }}_manifest.json",
        trigger_rule="all_done",
    )


with DAG(
    dag_id="bettertoken_edited_consumer",
    schedule=[EDITED],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    tags=["bettertoken", "example"],
):

    @task
    def use_edited_images(triggering_asset_events=None) -> list[str]:
        """Stands for any downstream step: here it only lists the PNGs that triggered it."""
        return sorted(
            event.asset.uri for events in (triggering_asset_events or {}).values() for event in events
        )

    use_edited_images()
