"""A table's enrichment in one call: the row planner, the mapped edits, the next chunk, the manifest and
the results table, wired.

Wiring the operators by hand stays possible (and is what this module does); most DAGs need only::

    with DAG("products", schedule=None, max_active_runs=1, ...):
        table_enrichment(
            table_uri="s3://in/products.csv",
            dest_prefix="s3://out/products/",
            key_column="sku",
            source_columns="image_uri",
            prompt_template="Put the ${name} on a plain white background",
            until_done=True,
        )
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from airflow.providers.common.compat.sdk import TaskGroup

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
from airflow_bettertoken.operators._spend_cap import spend_caps
from airflow_bettertoken.operators.backfill import _fixed
from airflow_bettertoken.operators.image_edit import BetterTokenImageEditOperator
from airflow_bettertoken.operators.list_rows import BetterTokenListRowsOperator
from airflow_bettertoken.operators.manifest import BetterTokenManifestOperator
from airflow_bettertoken.operators.next_chunk import BetterTokenNextChunkOperator
from airflow_bettertoken.operators.results_table import BetterTokenResultsTableOperator
from airflow_bettertoken.protocol.spend import check_max_billed_calls
from airflow_bettertoken.storage.locations import parse_s3_prefix

__all__ = ["table_enrichment"]


def table_enrichment(
    *,
    dest_prefix: str,
    table_uri: str | None = None,
    rows: Any = None,
    table_format: str | None = None,
    key_column: str = "key",
    source_columns: str | Sequence[str] = "source",
    prompt_column: str | None = None,
    prompt_template: str | None = None,
    size_column: str | None = None,
    default_size: str = "auto",
    dest_column: str | None = None,
    max_edits_per_run: int | str = 500,
    until_done: bool | str = False,
    retry_failed: bool | str = False,
    replan_changed_prompts: bool | str = False,
    allow_empty: bool = False,
    conf_updates: Mapping[str, Any] | None = None,
    results_prefix: str | None = None,
    pool: str | None = "bettertoken",
    max_billed_calls: int | None = None,
    max_spend: str | None = None,
    max_spend_per_run: str | None = None,
    edit_retries: int = 2,
    edit_retry_delay: timedelta = timedelta(seconds=30),
    s3_extra_args: dict[str, Any] | None = None,
    bettertoken_conn_id: str = BetterTokenHook.default_conn_name,
    aws_conn_id: str | None = "aws_default",
    group_id: str = "enrichment",
    prefix_group_id: bool = False,
) -> TaskGroup:
    """Edit one image per row of a table, each with its own prompt, a chunk per run: one task group.

    Builds, inside the current DAG, ``list_rows`` (the pending rows, at most ``max_edits_per_run``,
    and the run's plan file), ``edit_row`` (one mapped, paid edit per row, in ``pool``), ``next_chunk``
    (triggers the next run while rows remain, when ``until_done`` may be on), ``write_manifest`` (the
    run's record and spend, ``dest_prefix`` + ``_manifest.json``; it fails the run if an edit failed)
    and ``write_results_table`` (one row per input row, under ``results_prefix``, emitted as an asset
    event). The manifest and the results table both end the group, so that either failing fails the
    run. The tasks keep these ids, unprefixed, unless ``prefix_group_id`` is set. Chain the runs one
    after another with the DAG's ``max_active_runs=1``.

    The table's arguments (``table_uri`` or ``rows``, the columns, ``prompt_template`` with its
    ``${field}`` placeholders) are the row planner's,
    :class:`~airflow_bettertoken.operators.list_rows.BetterTokenListRowsOperator`.

    :param dest_prefix: ``s3://bucket/prefix/`` for the outputs: ``dest_prefix + key + ".png"``. (templated)
    :param table_uri: the table in S3: JSON Lines, CSV or Parquet; or give ``rows``. (templated)
    :param rows: a list of dicts, e.g. a ``@task``'s return value. (templated)
    :param table_format: ``jsonl``, ``csv`` or ``parquet``; default from the key's suffix. (templated)
    :param key_column: the row's key; the output is named after it.
    :param source_columns: the column (or columns) of source URIs.
    :param prompt_column: the row's own prompt; where it is empty, ``prompt_template`` is rendered.
    :param prompt_template: the prompt with ``${field}`` placeholders. (templated)
    :param size_column: the row's size; where it is empty, ``default_size``.
    :param default_size: the size of rows that name none, one of ``SIZES``. (templated)
    :param dest_column: the row's own output; where it is empty, under ``dest_prefix``.
    :param max_edits_per_run: the edits one run plans, from 1 to ``[core] max_map_length``. (templated)
    :param until_done: trigger the next run while rows remain. (templated)
    :param retry_failed: plan again the rows that failed for good in earlier runs of the chain. (templated)
    :param replan_changed_prompts: edit again rows whose prompt changed since their output was made.
        (templated)
    :param allow_empty: a table with no good row is an empty batch, not an error.
    :param conf_updates: what the next run's conf changes. (templated)
    :param results_prefix: ``s3://bucket/prefix/`` of the results tables; default ``dest_prefix`` +
        ``_results/``. (templated)
    :param pool: the Airflow pool that caps the paid calls in flight; create it before the first run.
    :param max_billed_calls: calls for one image that may have been billed, ever, before no more are sent.
    :param max_spend: the cap on what the whole chain of runs spends, in the connection's price table's
        currency (``"25.00"`` or ``"USD 25.00"``), e.g. ``"{{ params.max_spend }}"``; unset, none. Each run
        plans only the rows whose estimate fits what is left, and its edits stop once their calls used up
        its reservation; the chain then stops and says how to resume. (templated)
    :param max_spend_per_run: the cap on what one run spends. (templated)
    :param edit_retries: Airflow's retries of each edit task (the API call has its own retry loop).
    :param edit_retry_delay: the wait before such a retry.
    :param s3_extra_args: what every S3 write adds, with ``S3Hook``'s meaning. (templated)
    :param bettertoken_conn_id: the BetterToken connection.
    :param aws_conn_id: the AWS connection for S3.
    :param group_id: the task group's id.
    :param prefix_group_id: prefix the tasks' ids with ``group_id``.
    :return: the task group, for dependencies such as ``upstream >> table_enrichment(...)``.
    """
    for name, prefix in (("dest_prefix", dest_prefix), ("results_prefix", results_prefix)):
        if _fixed(prefix):
            parse_s3_prefix(prefix, name)
    if isinstance(max_edits_per_run, bool) or (isinstance(max_edits_per_run, int) and max_edits_per_run < 1):
        raise BetterTokenInputError(
            f"table_enrichment max_edits_per_run={max_edits_per_run!r} must be a whole number of at least 1, "
            "or a template such as '{{ params.max_edits_per_run }}'"
        )
    budget: dict[str, Any] = {}
    if max_billed_calls is not None:
        budget["max_billed_calls"] = check_max_billed_calls(max_billed_calls, "table_enrichment")
    caps = spend_caps(max_spend, max_spend_per_run, "table_enrichment")
    budget.update(caps)
    connections = {"s3_extra_args": s3_extra_args, "aws_conn_id": aws_conn_id}

    with TaskGroup(group_id=group_id, prefix_group_id=prefix_group_id) as group:
        planner = BetterTokenListRowsOperator(
            task_id="list_rows",
            dest_prefix=dest_prefix,
            table_uri=table_uri,
            rows=rows,
            table_format=table_format,
            key_column=key_column,
            source_columns=source_columns,
            prompt_column=prompt_column,
            prompt_template=prompt_template,
            size_column=size_column,
            default_size=default_size,
            dest_column=dest_column,
            replan_changed_prompts=replan_changed_prompts,
            max_edits=max_edits_per_run,
            replan_failed=retry_failed,
            allow_empty=allow_empty,
            bettertoken_conn_id=bettertoken_conn_id,
            **caps,
            **connections,
        )
        # Each planned edit carries its own prompt and size.
        edits = BetterTokenImageEditOperator.partial(
            task_id="edit_row",
            retries=edit_retries,
            retry_delay=edit_retry_delay,
            bettertoken_conn_id=bettertoken_conn_id,
            **({"pool": pool} if pool else {}),
            **budget,
            **connections,
        ).expand_kwargs(planner.output)
        last = edits
        next_chunk = None
        if until_done is not False:
            next_chunk = BetterTokenNextChunkOperator(
                task_id="next_chunk",
                edits=planner.output,
                results=edits.output,
                until_done=until_done,
                conf_updates=dict(conf_updates or {}),
            )
            last = last >> next_chunk
        manifest = BetterTokenManifestOperator(
            task_id="write_manifest",
            edits=planner.output,
            results=edits.output,
            manifest_uri=dest_prefix + "_manifest.json",
            next_chunk_task_id=next_chunk.task_id if next_chunk else None,
            trigger_rule="all_done",
            **connections,
        )
        table = BetterTokenResultsTableOperator(
            task_id="write_results_table",
            dest_prefix=dest_prefix,
            edits=planner.output,
            results=edits.output,
            results_prefix=results_prefix,
            **connections,
        )
        last >> [manifest, table]
    return group
