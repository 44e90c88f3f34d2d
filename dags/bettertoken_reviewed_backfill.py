"""A backfill whose edits a person reviews before they are published (Airflow 3.1 and later).

With ``review`` on, the edits are written under the run's staging prefix,
``s3://<out>/_bettertoken/staging/<dag>/<run>/round-1/``, and nothing reaches ``dest_prefix`` until a person
approves it. The gate ``review`` is a human-in-the-loop task: it links to the run's review page in the
gallery (``/bettertoken/dags/<dag>/runs/<run>/review``), where each image is approved, rejected or
re-edited with a revised prompt, the whole page in one submit; answering the task (in Airflow's
"Required actions", or through the REST API) publishes the approved images. Re-edits are new paid
edits (``reedit_image``), reviewed once more by ``review_reedits``. After ``review_hours`` without an
answer, every image nobody decided on takes ``undecided`` (``reject`` by default). The manifest
records the review beside the run's edits and spend.

What is pending is decided by ``dest_prefix``, the published images: a rerun pays only for images
that were never published (a rejected one is planned again).

    airflow dags trigger bettertoken_reviewed_backfill --conf '{"review": true}'

The tasks come from :func:`~airflow_bettertoken.catalog_backfill` with ``review``. On Airflow 3.0,
which has no human-in-the-loop tasks, this file fails to import, naming 3.1.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_bettertoken import SIZES, catalog_backfill

#: What an image nobody decided on gets when a round closes, and on a timeout: this DAG's choice.
UNDECIDED = "reject"
#: How long each round waits for its answer.
REVIEW_TIMEOUT = timedelta(hours=48)

# A cap such as "25.00" or "USD 25.00", or empty for none.
MONEY = "^(([A-Z]{3} )?[0-9]+(\\.[0-9]+)?)?$"

with DAG(
    dag_id="bettertoken_reviewed_backfill",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["bettertoken", "example", "review"],
    params={
        "in_bucket": Param("bettertoken-in", type="string"),
        "out_bucket": Param("bettertoken-out", type="string"),
        "source_prefix": Param("catalog/", type="string", pattern="^([^/].*/)?$"),
        "dest_prefix": Param("catalog-edited/", type="string", pattern="^[^/].*/$"),
        "prompt": Param("Put the product on a plain white background", type="string", minLength=1),
        "size": Param("auto", enum=list(SIZES)),
        "max_edits_per_run": Param(500, type="integer", minimum=1, maximum=1024),
        "max_spend": Param(
            "",
            type="string",
            pattern=MONEY,
            description="The run's cap on cost, in the price table's currency (e.g. 25.00); empty: none",
        ),
        "review": Param(
            False, type="boolean", description="Stage the edits until a person approves each one"
        ),
    },
) as dag:
    catalog_backfill(
        source_prefix="s3://{{ params.in_bucket }}/{{ params.source_prefix }}",
        dest_prefix="s3://{{ params.out_bucket }}/{{ params.dest_prefix }}",
        prompt="{{ params.prompt }}",
        size="{{ params.size }}",
        max_edits_per_run="{{ params.max_edits_per_run }}",
        pool="bettertoken",
        max_spend="{{ params.max_spend }}",
        review="{{ params.review }}",
        review_timeout=REVIEW_TIMEOUT,
        undecided=UNDECIDED,
    )
