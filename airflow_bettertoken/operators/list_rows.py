"""Plan the edits of a table's rows for ``.expand_kwargs(...)``: a prompt per row, only what is pending."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import BaseOperator, conf

from airflow_bettertoken.exceptions import BetterTokenInputError, fail_task_on_permanent_error
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
from airflow_bettertoken.operators._spend_cap import ESTIMATE_KEY, SpendCap
from airflow_bettertoken.operators._xcom import task_id_of
from airflow_bettertoken.operators.next_chunk import is_on
from airflow_bettertoken.operators.preflight import preflight
from airflow_bettertoken.protocol.rows import RowSpec
from airflow_bettertoken.protocol.templates import is_template
from airflow_bettertoken.storage.chain import (
    ChainState,
    Window,
    chain_record,
    chain_root,
    with_reservation,
    with_window_of,
)
from airflow_bettertoken.storage.findings import FINDINGS_KEY, ListingFindings, SkippedKey
from airflow_bettertoken.storage.listing import COUNTS_KEY
from airflow_bettertoken.storage.locations import S3Location, parse_s3_prefix, parse_s3_uri
from airflow_bettertoken.storage.objects import ImageStore
from airflow_bettertoken.storage.row_planning import RowPlanner, outputs_found, prompts_changed
from airflow_bettertoken.storage.s3_extra_args import S3ExtraArgs
from airflow_bettertoken.storage.table_plan import table_plan_location, write_plan
from airflow_bettertoken.storage.tables import Unreadable, read_rows, table_format_of
from airflow_bettertoken.storage.typed_record import TypedRecord

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context


__all__ = ["BetterTokenListRowsOperator"]

# Bad rows named in the log; the plan file has them all, the findings the first 100.
_LOGGED_BAD_ROWS = 10


class BetterTokenListRowsOperator(BaseOperator):
    """Plan one edit per row of a table, each with its own prompt, for
    ``BetterTokenImageEditOperator.partial(...).expand_kwargs(...)``.

    The rows come from a table in S3 (``table_uri``: JSON Lines, CSV, or Parquet when pyarrow is
    installed; what ``SqlToS3Operator`` writes from a SQL query), streamed, or for small sets from
    ``rows``, a list of dicts such as a ``@task`` returns. Each row has a key (its id), one or more
    source URIs, and its own prompt or the fields of ``prompt_template``, rendered per row:
    ``"Recolour the ${product} in ${colour}"``. ``${...}``, not ``{{ ... }}``: Airflow renders
    template fields with Jinja before the task runs. The output is ``dest_prefix + key + ".png"``.

    Returns ``[{"source", "dest", "prompt", "size", "image_label"}, ...]`` in the table's order; a row
    whose prompt changed, planned with ``replan_changed_prompts``, also gets ``if_exists="replace"``
    (so leave ``if_exists`` out of the edit's ``partial(...)`` then: Airflow refuses a mapped argument
    that ``partial`` set too).

    Bad rows (a missing field, an unknown size, a bad URI, a prompt that renders empty or too long, a
    key or an output that an earlier row has) are reported with their reasons, in the log (the first
    10), the plan file and the XCom ``counts`` (``bad``), and the other rows run: a bad row is never
    paid for. A table that cannot be read (bad encoding, no header, a column the arguments name in no
    row) fails the task, naming the line or column; so does a table with no good row, unless
    ``allow_empty``.

    Every run writes its plan file, one line per row with its state (``planned``, ``done``, ``bad``,
    ``failed for good``, ``later``), at ``_bettertoken/tables/<dag id>/<run id>/plan.jsonl`` in the
    bucket of ``dest_prefix``, before any paid call. Runs chained by
    :class:`~airflow_bettertoken.operators.next_chunk.BetterTokenNextChunkOperator` share a chain
    record keyed by row key, as for a catalog: rows that failed for good are not planned again unless
    ``replan_failed``. The XCom ``counts`` holds ``images`` (good rows), ``done``, ``pending``,
    ``planned``, ``remaining``, ``failed_for_good`` and ``bad``; ``findings`` the first 100 bad rows.

    :param dest_prefix: ``s3://bucket/prefix/`` for the outputs. (templated)
    :param table_uri: ``s3://bucket/key`` of the table; or give ``rows``. (templated)
    :param rows: a list of dicts, e.g. ``rows_task.output`` or a ``@task``'s return value. (templated)
    :param table_format: ``jsonl``, ``csv`` or ``parquet``; default from the key's suffix. (templated)
    :param key_column: the row's key; the output is named after it.
    :param source_columns: the column (or columns) of source URIs; each value one URI or a list.
    :param prompt_column: the row's own prompt; where it is empty, ``prompt_template`` is rendered.
    :param prompt_template: the prompt with ``${field}`` placeholders; an undefined field makes the
        row bad. (templated)
    :param size_column: the row's size; where it is empty, ``default_size``.
    :param default_size: the size of rows that name none. (templated)
    :param dest_column: the row's output (``s3://.../x.png``, or a prefix ending in ``/``); where it is
        empty, under ``dest_prefix``.
    :param only_pending: plan only rows whose output does not exist yet. ``False`` plans every good row,
        for a forced re-edit with ``if_exists="replace"``.
    :param replan_changed_prompts: also plan rows whose output exists but was made with another prompt
        (or size, or sources), as the output's S3 metadata says: one HEAD per existing output; they
        replace it (``if_exists="replace"``). (templated)
    :param max_edits: plan at most this many; default ``[core] max_map_length``. (templated)
    :param replan_failed: plan again rows that failed for good in earlier runs of the chain. (templated)
    :param allow_empty: a table with no good row is a normal, empty batch, not an error.
    :param max_spend: the cap on what the whole chain of runs spends, in the connection's price table's
        currency (``"25.00"`` or ``"USD 25.00"``); unset, none. Each run plans only the rows whose
        estimated cost (per image at ``default_size``) fits what is left, and reserves it; the edits,
        given the same caps, stop once their calls used it up. (templated)
    :param max_spend_per_run: the cap on what one run spends. (templated)
    :param preflight: check the BetterToken connection and that ``dest_prefix`` can be written first.
    :param s3_extra_args: what the edits add to every S3 write, with ``S3Hook``'s meaning. (templated)
    :param bettertoken_conn_id: the BetterToken connection the edits will use.
    :param aws_conn_id: the AWS connection for S3. (templated)
    """

    template_fields: Sequence[str] = (
        "dest_prefix",
        "table_uri",
        "rows",
        "table_format",
        "prompt_template",
        "default_size",
        "replan_changed_prompts",
        "max_edits",
        "replan_failed",
        "max_spend",
        "max_spend_per_run",
        "aws_conn_id",
        "s3_extra_args",
    )

    def __init__(
        self,
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
        only_pending: bool = True,
        replan_changed_prompts: bool | str = False,
        max_edits: int | str | None = None,
        replan_failed: bool | str = False,
        allow_empty: bool = False,
        max_spend: str | None = None,
        max_spend_per_run: str | None = None,
        preflight: bool = True,
        s3_extra_args: dict[str, Any] | None = None,
        bettertoken_conn_id: str = BetterTokenHook.default_conn_name,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (table_uri is None) == (rows is None):
            raise BetterTokenInputError("give table_uri (a table in S3) or rows (a list of dicts), not both")
        self.dest_prefix = dest_prefix
        self.table_uri = table_uri
        self.rows = rows
        self.rows_task_id = task_id_of(rows)
        self.table_format = table_format
        self.key_column = key_column
        self.source_columns = (source_columns,) if isinstance(source_columns, str) else tuple(source_columns)
        self.prompt_column = prompt_column
        self.prompt_template = prompt_template
        self.size_column = size_column
        self.default_size = default_size
        self.dest_column = dest_column
        self.only_pending = only_pending
        self.replan_changed_prompts = replan_changed_prompts
        self.max_edits = max_edits
        self.replan_failed = replan_failed
        self.allow_empty = allow_empty
        self.max_spend = max_spend
        self.max_spend_per_run = max_spend_per_run
        self.preflight = preflight
        self.s3_extra_args = s3_extra_args
        self.bettertoken_conn_id = bettertoken_conn_id
        self.aws_conn_id = aws_conn_id
        S3ExtraArgs.check_literal(s3_extra_args)
        # What is known before templating fails the DAG at parse time.
        if not is_template(prompt_template) and not is_template(default_size):
            self._spec("s3://parse-time/")

    @cached_property
    def store(self) -> ImageStore:
        return ImageStore(S3Hook(aws_conn_id=self.aws_conn_id), s3_extra_args=self.s3_extra_args)

    def execute(self, context: Context) -> list[dict[str, Any]]:
        ti = context["ti"]
        with fail_task_on_permanent_error():
            dest = parse_s3_prefix(self.dest_prefix, "dest_prefix")
            spec = self._spec(dest.uri)
            source_uri, rows = self._rows(ti)
            store_check = None
            if self.preflight:
                store_check = preflight(BetterTokenHook(self.bettertoken_conn_id), self.store, dest)
                for warning in store_check.warnings:
                    self.log.warning("Preflight: %s", warning)
            record, chain, earlier = self._chain(ti, source_uri, dest) if self.only_pending else (None,) * 3
            cap = self._cap(ti, dest)
            before = cap.before_planning(
                earlier, wanted=self._max_edits(), chain_location=record.location if record else None
            )

            def planner_of() -> RowPlanner:
                return RowPlanner(
                    spec,
                    before.planned,
                    outputs_found(self.store, dest) if self.only_pending else None,
                    prompts_changed(self.store)
                    if self.only_pending and is_on(self.replan_changed_prompts)
                    else None,
                    failed_for_good={}
                    if chain is None or is_on(self.replan_failed)
                    else chain.failed_for_good,
                )

            planner = planner_of()
            plan_at = table_plan_location(dest.bucket, ti.dag_id, ti.run_id)
            if not write_plan(self.store.io, plan_at, planner.plan(rows)).written:
                # A cleared run plans again: its new plan replaces the one of its earlier try.
                planner = planner_of()
                write_plan(self.store.io, plan_at, planner.plan(self._rows(ti)[1]), if_none_match=False)
            counts = planner.row_counts()
            spend = cap.after_planning(
                before, planned=counts.planned, pending=counts.pending, remaining=counts.remaining
            )
        self._report(planner, plan_at.uri, source_uri)
        if not counts.images:
            if not self.allow_empty:
                with fail_task_on_permanent_error():
                    raise BetterTokenInputError(
                        f"{source_uri} has no row to edit: {counts.bad} bad rows (see the log and "
                        f"{plan_at.uri}). Correct the table, or pass allow_empty=True where an empty "
                        "batch is normal"
                    )
            self.log.info("No row to edit in %s; allow_empty is set, so nothing is edited", source_uri)
        if record is not None and chain is not None:
            chain = dataclasses.replace(chain, images=counts.images, done_at_start=counts.done)
            with fail_task_on_permanent_error():
                record.update(
                    lambda current: with_reservation(
                        with_window_of(current, chain, ti.run_id), ti.run_id, spend
                    )
                )
        with fail_task_on_permanent_error():
            cap.reserve(spend)
        ti.xcom_push(key=COUNTS_KEY, value=counts.dump())
        ti.xcom_push(key=ESTIMATE_KEY, value=spend.dump())
        self.log.info("%s", cap.line(spend))
        skipped = [SkippedKey(f"line {row.line}: {row.key}", row.reason or "") for row in planner.bad]
        findings = ListingFindings(tuple(skipped), counts.bad, store_check)
        ti.xcom_push(key=FINDINGS_KEY, value=findings.dump())
        return planner.edits

    def _spec(self, dest_prefix: str) -> RowSpec:
        return RowSpec(
            dest_prefix=dest_prefix,
            key_column=self.key_column,
            source_columns=self.source_columns,
            prompt_column=self.prompt_column,
            prompt_template=self.prompt_template or None,
            size_column=self.size_column,
            default_size=self.default_size or "auto",
            dest_column=self.dest_column,
        )

    def _rows(self, ti: Any) -> tuple[str, Iterator[tuple[int, Mapping[str, Any] | Unreadable]]]:
        """The rows' source, as the chain and the messages name it, and the rows themselves."""
        if self.table_uri is not None:
            table = parse_s3_uri(self.table_uri, "table_uri")
            fmt = table_format_of(table.uri, self.table_format)
            return table.uri, read_rows(self.store.io, table, fmt)
        rows = self.rows
        # A list, or the lazy sequence of a mapped task's XComs.
        if isinstance(rows, (str, bytes, Mapping)) or not hasattr(rows, "__iter__"):
            raise BetterTokenInputError(f"rows must be a list of dicts, got {type(rows).__name__}")
        source = f"xcom://{ti.dag_id}/{self.rows_task_id or self.task_id}"
        return source, (
            (
                n,
                row
                if isinstance(row, Mapping)
                else Unreadable(f"row {n} is a {type(row).__name__}, not a dict"),
            )
            for n, row in enumerate(rows, start=1)
        )

    def _cap(self, ti: Any, dest: S3Location) -> SpendCap:
        return SpendCap(
            self.store.io,
            BetterTokenHook(self.bettertoken_conn_id),
            bucket=dest.bucket,
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            size=self.default_size,
            max_spend=self.max_spend,
            max_spend_per_run=self.max_spend_per_run,
        )

    def _chain(
        self, ti: Any, source_uri: str, dest: S3Location
    ) -> tuple[TypedRecord, ChainState, ChainState | None]:
        """The chain's record; the chain as this run plans it, the earlier runs' failures kept; and the
        chain as the earlier runs left it, whose spend the cap counts (None on a chain's first run)."""
        record = chain_record(
            self.store.s3_hook, dest.bucket, ti.dag_id, ti.run_id, extra_args=self.s3_extra_args
        )
        window = Window(ti.run_id, after="", through="")
        current = record.read()
        if current is not None and (current.source_uri, current.dest_uri) == (source_uri, dest.uri):
            return record, current.with_window(window), current
        fresh = ChainState(
            dag_id=ti.dag_id,
            root_run_id=chain_root(ti.run_id),
            source_uri=source_uri,
            dest_uri=dest.uri,
            windows=(window,),
        )
        return record, fresh, None

    def _report(self, planner: RowPlanner, plan_uri: str, source_uri: str) -> None:
        counts = planner.row_counts()
        self.log.info(
            "Rows of %s: %s good, %s bad, %s done, %s failed for good, %s planned, %s left for later runs; "
            "the plan of every row: %s",
            source_uri,
            f"{counts.images:,}",
            f"{counts.bad:,}",
            f"{counts.done:,}",
            f"{counts.failed_for_good:,}",
            f"{counts.planned:,}",
            f"{counts.remaining:,}",
            plan_uri,
        )
        for row in planner.bad[:_LOGGED_BAD_ROWS]:
            self.log.warning("Bad row on line %d (key %r): %s", row.line, row.key, row.reason)
        if counts.bad > _LOGGED_BAD_ROWS:
            self.log.warning(
                "... and %d more bad rows; the plan file lists them all", counts.bad - _LOGGED_BAD_ROWS
            )

    def _max_edits(self) -> int:
        limit = conf.getint("core", "max_map_length")
        if self.max_edits in (None, ""):
            return limit
        try:
            value = int(self.max_edits)
        except (TypeError, ValueError):
            value = 0
        if not 1 <= value <= limit:
            raise BetterTokenInputError(
                f"max_edits={self.max_edits!r} must be a whole number from 1 to [core] max_map_length={limit}"
            )
        return value
