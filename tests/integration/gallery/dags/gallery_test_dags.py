"""DAGs for the gallery's tests only, in a DAG bundle of its own (``gallery-tests``, see conftest.py).

Its edits are made by a user's subclass of the edit operator, mapped and unmapped, and read S3
through ``aws_counted``: a proxy that records every request, so the tests can count the gallery's.
"""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param

from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.operators.list_images import BetterTokenListImagesOperator


class CatalogImageEdit(BetterTokenImageEditOperator):
    """A user's own edit operator: its task instances say "CatalogImageEdit", and are edits all the same."""


with DAG(
    dag_id="bettertoken_gallery_counted",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={"in_bucket": Param("in", type="string"), "out_bucket": Param("out", type="string")},
):
    images = BetterTokenListImagesOperator(
        task_id="list_images",
        source_prefix="s3://{{ params.in_bucket }}/catalog/",
        dest_prefix="s3://{{ params.out_bucket }}/edited/",
        aws_conn_id="aws_counted",
    )
    CatalogImageEdit.partial(
        task_id="edit_image", prompt="Put the product on white", aws_conn_id="aws_counted"
    ).expand_kwargs(images.output)
    CatalogImageEdit(
        task_id="edit_cover",
        prompt="Make it a cover",
        source="s3://{{ params.in_bucket }}/cover.png",
        dest="s3://{{ params.out_bucket }}/covers/",
        aws_conn_id="aws_counted",
    )


with DAG(
    dag_id="bettertoken_gallery_requester_pays",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    params={
        "in_bucket": Param("in", type="string"),
        "out_bucket": Param("out", type="string"),
        "payer": Param("requester", type="string"),
    },
):
    # Its buckets are requester-pays. RequestPayer is templated, so only the rendered fields name it.
    BetterTokenImageEditOperator(
        task_id="edit_photo",
        prompt="Put the product on white",
        source="s3://{{ params.in_bucket }}/photo.png",
        dest="s3://{{ params.out_bucket }}/edited/",
        aws_conn_id="aws_counted",
        s3_extra_args={"RequestPayer": "{{ params.payer }}"},
    )

with DAG(
    dag_id="bettertoken_gallery_no_edits", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")
):
    # A DAG of the same deployment with no BetterToken task: the plugin's tabs show here too.
    EmptyOperator(task_id="nothing")
