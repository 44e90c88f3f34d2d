"""Write a table run's results table, one row per input row, and tell downstream DAGs with an asset event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import Asset, BaseOperator

from airflow_bettertoken.exceptions import fail_task_on_permanent_error
from airflow_bettertoken.operators._s3 import S3Writer
from airflow_bettertoken.operators._xcom import materialize, task_id_of
from airflow_bettertoken.operators.backfill import _fixed
from airflow_bettertoken.protocol.spend import run_spend
from airflow_bettertoken.storage.ledger import read_ledgers
from airflow_bettertoken.storage.locations import S3Location, parse_s3_prefix, parse_s3_uri
from airflow_bettertoken.storage.results_table import RunOutcomes, results_locations
from airflow_bettertoken.storage.results_writer import write_results_table
from airflow_bettertoken.storage.s3_io import S3IO
from airflow_bettertoken.storage.table_plan import read_plan, table_plan_location

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = ["BetterTokenResultsTableOperator", "latest_table_uri"]

#: Where the tables go when no ``results_prefix`` is given: beside the outputs, as the manifests are.
RESULTS_FOLDER = "_results/"


def latest_table_uri(results_prefix: str) -> str:
    """The ``latest`` table (JSON Lines) under ``results_prefix``: the URI of the asset it is emitted as."""
    return results_locations(parse_s3_prefix(results_prefix, "results_prefix"), "", ".jsonl")[1].uri


class BetterTokenResultsTableOperator(S3Writer, BaseOperator):
    """Write the results table of a table's run: one row per input row, whatever became of it.

    Reads the run's plan file (written by the row planner), this run's edit results and failures from
    XCom, and the previous ``latest`` table, and writes, in bounded memory however many rows there are:

    - ``<results_prefix>runs/<run id>.jsonl``, create-only: a run's table is written once;
    - ``<results_prefix>latest.jsonl``, replaced: the newest run's table;
    - the same as ``.parquet`` when pyarrow is installed.

    Each row has ``key``, ``state`` (``done``, ``skipped``, ``failed``, ``failed for good``, ``blocked
    by budget``, ``bad``, ``later``), ``output_uri``, ``width``, ``height``, ``size_matches``,
    ``sha256``, ``billed_calls``, ``cost`` and ``currency`` (from the spend ledgers, once priced), ``prompt``
    and ``error``. Rows this run did not edit keep what the previous ``latest`` table said of them.

    The ``latest`` table is an asset: with a literal ``results_prefix`` (or ``dest_prefix``), the
    operator adds ``Asset(<results_prefix>latest.jsonl)`` to its ``outlets``; with a templated one, put
    that asset in ``outlets`` yourself. Every asset in ``outlets`` gets the event, with the run's
    counts by state and its spend as extra, so that a DAG scheduled on it runs after each table.

    It runs with ``trigger_rule="all_done"`` unless told otherwise: failed edits are rows too. It
    does not fail the run for them; the manifest task does.

    :param dest_prefix: the table's ``s3://bucket/prefix/`` of outputs: its bucket holds the plan file.
        (templated)
    :param edits: the planner's edits: ``list_rows.output``; their outputs' spend ledgers give the
        run's spend and the billed calls of each failed edit. (templated)
    :param results: the mapped edit's return values: ``edit_task.output``; its ``failure`` XCom gives
        each failed edit's reason. (templated)
    :param results_prefix: ``s3://bucket/prefix/`` of the tables; default ``dest_prefix`` +
        ``_results/``. (templated)
    :param s3_extra_args: what every write to S3 adds, with ``S3Hook``'s meaning. (templated)
    :param aws_conn_id: the AWS connection for S3.
    """

    template_fields: Sequence[str] = (
        "dest_prefix",
        "edits",
        "results",
        "failures",
        "results_prefix",
        "s3_extra_args",
    )

    def __init__(
        self,
        *,
        dest_prefix: str,
        edits: Any,
        results: Any,
        results_prefix: str | None = None,
        s3_extra_args: dict[str, Any] | None = None,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        prefix = results_prefix if results_prefix is not None else _default_prefix(dest_prefix)
        if _fixed(prefix):
            kwargs["outlets"] = [*_as_list(kwargs.get("outlets")), Asset(uri=latest_table_uri(prefix))]
        if _fixed(dest_prefix):
            parse_s3_prefix(dest_prefix, "dest_prefix")
        super().__init__(**kwargs)
        self.dest_prefix = dest_prefix
        self.edits = edits
        self.results = results
        self.edit_task_id = task_id_of(results)
        # The failed edits' reasons, when results is an edit task's output (as the manifest reads them).
        self.failures = results["failure"] if self.edit_task_id else None
        self.results_prefix = results_prefix
        self._take_s3_arguments(s3_extra_args, aws_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        with fail_task_on_permanent_error():
            dest = parse_s3_prefix(self.dest_prefix, "dest_prefix")
            results_prefix = parse_s3_prefix(
                self.results_prefix or _default_prefix(self.dest_prefix), "results_prefix"
            )
            io = S3IO(self.s3_hook, self.s3_extra_args)
            run = RunOutcomes.from_xcom(
                materialize(self.results), materialize(self.failures), self.edit_task_id
            )
            outputs = self._outputs(dest.bucket)
            ledgers = read_ledgers(self.s3_hook, outputs, extra_args=self.s3_write_args)
            # An output without a ledger (or this run's entry in it) had no call sent for it.
            run.billed_calls = {o.uri: 0 for o in outputs}
            run.add_spend(ledgers, ti.dag_id, ti.run_id)
            plan = read_plan(io, table_plan_location(dest.bucket, ti.dag_id, ti.run_id))
            written = write_results_table(io, plan, run, results_prefix, ti.run_id)
        spend = run_spend(ledgers, ti.dag_id, ti.run_id)
        extra = {
            "run_id": ti.run_id,
            "rows": written.rows,
            "counts": written.counts,
            "spend": {
                "calls": spend.posts,
                "billed_calls": spend.paid + spend.maybe_billed,
                # An estimate from the spend ledgers' recorded usage and prices: the invoice is the truth.
                "cost": None if run.currency is None else str(spend.cost),
                "currency": run.currency,
            },
            "tables": list(written.run_uris),
            "latest": list(written.latest_uris),
        }
        self.log.info(
            "Wrote the results table of %d rows to %s (and %s): %s",
            written.rows,
            ", ".join(written.run_uris),
            ", ".join(written.latest_uris),
            ", ".join(f"{n} {state}" for state, n in written.counts.items() if n),
        )
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = extra
        return extra

    def _outputs(self, bucket: str) -> list[S3Location]:
        """The planned edits' outputs in the plan's bucket, whose ledgers say what the run spent."""
        dests = {edit.get("dest") for edit in self.edits or () if isinstance(edit, Mapping)}
        found = {parse_s3_uri(d, "dest") for d in dests if isinstance(d, str) and d.startswith("s3://")}
        return sorted(o for o in found if o.bucket == bucket)


def _default_prefix(dest_prefix: Any) -> Any:
    """``dest_prefix`` + ``_results/``, or the template that renders to it."""
    return dest_prefix + RESULTS_FOLDER if isinstance(dest_prefix, str) else dest_prefix


def _as_list(outlets: Any) -> list[Any]:
    if outlets is None:
        return []
    return list(outlets) if isinstance(outlets, (list, tuple)) else [outlets]
