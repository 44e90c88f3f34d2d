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
every run. A run in which any edit failed ends ``failed``.

It has no schedule: it runs when triggered, so unpausing it starts nothing on the default buckets.
With ``by_date`` on, a run takes one day's sub-prefix: ``day``, or the run's date when ``day`` is
empty; a chain keeps its first run's day. A date range is one trigger a day (``max_active_runs=1``
runs them one after another):

    for day in 2026-11-01 2026-11-02 2026-11-03; do
        airflow dags trigger bettertoken_backfill --conf '{"by_date": true, "day": "'$day'"}'
    done

The four tasks come from :func:`~airflow_bettertoken.catalog_backfill`; this file only maps the
DAG's params onto it.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_bettertoken import SIZES, catalog_backfill

# The day a by_date run works on: the day its first chunk pinned in the conf, or the run's own date
# (a run triggered without a logical date has no `ds`: its run_after stands in).
THE_DAY = "(params.day or (dag_run.logical_date or dag_run.run_after).strftime('%Y-%m-%d'))"
DAY = "{{ " + THE_DAY + " ~ '/' if params.by_date else '' }}"

# A cap such as "25.00" or "USD 25.00", or empty for none.
MONEY = "^(([A-Z]{3} )?[0-9]+(\\.[0-9]+)?)?$"

with DAG(
    dag_id="bettertoken_backfill",
    schedule=None,
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
        "max_spend": Param(
            "",
            type="string",
            pattern=MONEY,
            description="The chain's cap on cost, in the price table's currency (e.g. 25.00); empty: none",
        ),
        "retry_failed": Param(
            False,
            type="boolean",
            description="Plan again the edits that failed for good in earlier runs of the chain",
        ),
    },
) as dag:
    catalog_backfill(
        source_prefix="s3://{{ params.in_bucket }}/{{ params.source_prefix }}" + DAY,
        dest_prefix="s3://{{ params.out_bucket }}/{{ params.dest_prefix }}" + DAY,
        prompt="{{ params.prompt }}",
        size="{{ params.size }}",
        max_edits_per_run="{{ params.max_edits_per_run }}",
        until_done="{{ params.until_done }}",
        retry_failed="{{ params.retry_failed }}",
        max_spend="{{ params.max_spend }}",
        conf_updates={"day": "{{ " + THE_DAY + " }}"},
        pool="bettertoken",
    )
