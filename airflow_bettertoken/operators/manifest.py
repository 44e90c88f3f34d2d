"""Write the manifests of a mapped edit run next to its outputs, then make the run's state tell the truth."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException, BaseOperator

from airflow_bettertoken.exceptions import BetterTokenError, fail_task_on_permanent_error
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
from airflow_bettertoken.operators._s3 import S3Writer
from airflow_bettertoken.operators._xcom import load_records, materialize, task_id_of
from airflow_bettertoken.operators.next_chunk import DECISION_KEY, ChunkDecision, is_on
from airflow_bettertoken.protocol.result import EditFailure, EditXCom
from airflow_bettertoken.protocol.review import ReviewRecord
from airflow_bettertoken.protocol.spend import OutputLedger, run_currency, run_spend
from airflow_bettertoken.storage.chain import ChainState, chain_record, run_line
from airflow_bettertoken.storage.costs import cost_history_location, paid_costs, record_run_costs
from airflow_bettertoken.storage.findings import FINDINGS_KEY, ListingFindings
from airflow_bettertoken.storage.ledger import read_ledgers
from airflow_bettertoken.storage.listing import COUNTS_KEY, ListingCounts
from airflow_bettertoken.storage.locations import S3Location, output_location, parse_dest, parse_s3_uri
from airflow_bettertoken.storage.review import ReviewStore, review_location
from airflow_bettertoken.storage.run_manifest import (
    RunManifest,
    build_run_manifest,
    review_manifest,
    write_manifests,
)
from airflow_bettertoken.storage.table_plan import chain_key_of

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = ["BetterTokenManifestOperator"]


def _output_of(edit: Mapping[str, Any]) -> S3Location | None:
    """The output object of one planned edit (its ``dest`` may be a prefix), or None if it names none."""
    try:
        source = edit["source"] if isinstance(edit["source"], str) else edit["source"][0]
        return output_location(parse_dest(edit["dest"]), parse_s3_uri(source, "source"))
    except (BetterTokenError, KeyError, IndexError, TypeError):
        return None


class BetterTokenManifestOperator(S3Writer, BaseOperator):
    """Record what a mapped edit run did, then fail the run if any edit failed.

    Writes ``_manifests/<run id>.json`` beside ``manifest_uri`` (never another run's), then rebuilds
    the summary at ``manifest_uri`` from every run's manifest. Run it with ``trigger_rule="all_done"``
    so that a run with failed edits still gets its record; it then fails, so that the run ends
    ``failed``. Skipped edits (the output existed) count as success.

    :param edits: the listing's ``{"source", "dest"}`` pairs: ``list_task.output``. (templated)
    :param results: the mapped edit's return values: ``edit_task.output``. Its ``failure`` XCom gives
        each failed edit's reason. (templated)
    :param manifest_uri: the summary, e.g. ``s3://bucket/edited/_manifest.json``. (templated)
    :param next_chunk_task_id: the task that triggers the next chunk's run, if the DAG has one.
    :param reviewed: the run has a review gate: record its review (approved, rejected, re-edited,
        published, with who and when) from the run's review record in S3, and count the re-edits'
        spend. (templated)
    :param fail_on_failed_edits: fail this task, and so the run, when any edit failed.
    :param s3_extra_args: what every write to S3 adds to ``put_object``, with ``S3Hook``'s meaning, e.g.
        ``{"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "..."}``. (templated)
    :param bettertoken_conn_id: the edits' BetterToken connection, whose recent costs per image this
        run's paid calls join (``storage/costs.py``); default the edit task's.
    :param aws_conn_id: the AWS connection for S3.
    """

    template_fields: Sequence[str] = (
        "edits",
        "results",
        "failures",
        "manifest_uri",
        "reviewed",
        "s3_extra_args",
    )

    def __init__(
        self,
        *,
        edits: Any,
        results: Any,
        manifest_uri: str,
        next_chunk_task_id: str | None = None,
        reviewed: bool | str = False,
        fail_on_failed_edits: bool = True,
        s3_extra_args: dict[str, Any] | None = None,
        bettertoken_conn_id: str | None = None,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bettertoken_conn_id = bettertoken_conn_id
        self.edits = edits
        self.results = results
        self.edit_task_id = task_id_of(results)
        # The failed edits' reasons, when results is an edit task's output (a mapped one resolves
        # to the values that exist, so a run without failures is no error).
        self.failures = results["failure"] if task_id_of(results) else None
        self.listing_task_id = task_id_of(edits)
        self.manifest_uri = manifest_uri
        self.next_chunk_task_id = next_chunk_task_id
        self.reviewed = reviewed
        self.fail_on_failed_edits = fail_on_failed_edits
        self._take_s3_arguments(s3_extra_args, aws_conn_id)

    def execute(self, context: Context) -> dict[str, int]:
        ti = context["ti"]
        with fail_task_on_permanent_error():
            summary = parse_s3_uri(self.manifest_uri, "manifest_uri")
            decision = self._chain_decision(ti)
        if self.edits is None:
            raise AirflowFailException(
                f"Nothing was planned, so no manifest was written: task {self.listing_task_id!r} failed "
                "before listing any edit; its log says why"
            )
        planned = list(self.edits)
        review = self._review(summary.bucket, ti)
        reedits = [
            {"source": list(item.sources), "dest": f"s3://{review.bucket}/{item.key}"}
            for item in (review.items.values() if review else ())
            if item.reedit_of is not None and item.sources
        ]
        with fail_task_on_permanent_error():
            ledgers = self._ledgers([*planned, *reedits], summary.bucket)
            manifest = build_run_manifest(
                planned,
                load_records(EditXCom, materialize(self.results), "return_value", self.edit_task_id),
                load_records(EditFailure, materialize(self.failures), "failure", self.edit_task_id),
                dag_id=ti.dag_id,
                run_id=ti.run_id,
                finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                listing=self._counts(ti),
                next_run_id=decision.next_run_id if decision else None,
                spend=run_spend(ledgers, ti.dag_id, ti.run_id),
                currency=run_currency(ledgers, ti.dag_id, ti.run_id),
                findings=self._findings(ti),
                review=review_manifest(review) if review is not None else None,
            )
            run_uri = write_manifests(self.s3_hook, summary, manifest, extra_args=self.s3_write_args)
        self._record_costs(ledgers, summary.bucket, manifest, ti)
        counts = manifest.counts
        chain = self._settle_chain(planned, manifest, context)
        self.log.info("Wrote %s and the summary %s", run_uri, self.manifest_uri)
        self.log.info("%s", run_line(manifest, chain))
        if counts.failed and self.fail_on_failed_edits:
            first = manifest.failures[0]
            raise AirflowFailException(
                f"{counts.failed} of {counts.planned} edits failed (see {run_uri}). "
                f"First: {first.source}: {first.error}: {first.reason}"
            )
        if self.next_chunk_task_id and decision is None:
            raise AirflowFailException(
                f"Task {self.next_chunk_task_id!r} failed before deciding whether to trigger the next "
                "chunk, so the work may have stopped early; its log says why"
            )
        return dataclasses.asdict(counts)

    def _from_listing(self, ti: Any, key: str) -> Any:
        """The listing task's XCom ``key``; None without a listing task."""
        return ti.xcom_pull(task_ids=self.listing_task_id, key=key) if self.listing_task_id else None

    def _counts(self, ti: Any) -> ListingCounts | None:
        """Where the image set stands, as the listing counted it; None when it pushed no counts."""
        value = self._from_listing(ti, COUNTS_KEY)
        where = f"XCom {COUNTS_KEY!r} of task {self.listing_task_id!r}"
        return None if value is None else ListingCounts.load(value, where)

    def _findings(self, ti: Any) -> ListingFindings | None:
        """What the listing found besides its edits; None when it pushed none."""
        value = self._from_listing(ti, FINDINGS_KEY)
        where = f"XCom {FINDINGS_KEY!r} of task {self.listing_task_id!r}"
        return None if value is None else ListingFindings.load(value, where)

    def _review(self, bucket: str, ti: Any) -> ReviewRecord | None:
        """The run's review record, read from S3 (never from XCom); None without a review gate."""
        if not is_on(self.reviewed):
            return None
        with fail_task_on_permanent_error():
            location = review_location(bucket, ti.dag_id, ti.run_id)
            return ReviewStore(self.s3_hook, location, extra_args=self.s3_write_args).read()

    def _ledgers(self, planned: list[Mapping[str, Any]], bucket: str) -> list[OutputLedger]:
        """The spend ledgers of the planned outputs in the manifest's bucket: what this run spent.

        The planned edits only name the outputs; what was sent and paid is read from the ledgers,
        which the edit tasks wrote before every call.
        """
        outputs = {_output_of(edit) for edit in planned}
        return read_ledgers(
            self.s3_hook,
            sorted(o for o in outputs if o is not None and o.bucket == bucket),
            extra_args=self.s3_write_args,
        )

    def _record_costs(self, ledgers: list[OutputLedger], bucket: str, manifest: RunManifest, ti: Any) -> None:
        """Add this run's paid costs to its connection's recent costs: one conditional write per run.

        They only estimate calls to come, so a failure to write them is logged and the run goes on.
        """
        costs = paid_costs(ledgers, ti.dag_id, ti.run_id)
        conn_id = self._edits_conn_id()
        try:
            history = record_run_costs(
                self.s3_hook,
                bucket,
                conn_id,
                ti.run_id,
                costs,
                manifest.currency,
                extra_args=self.s3_write_args,
            )
        except BetterTokenError as err:  # storage/s3_io.py turns S3's errors into these
            self.log.warning("Could not add this run's costs to the recent costs of %r: %s", conn_id, err)
            return
        if history is not None:
            self.log.info(
                "Added %d paid calls' costs to the recent costs of connection %r (%s)",
                sum(map(len, costs.values())),
                conn_id,
                cost_history_location(bucket, conn_id).uri,
            )

    def _edits_conn_id(self) -> str:
        """The edits' BetterToken connection: this task's argument, else the edit task's, else the default."""
        if self.bettertoken_conn_id:
            return self.bettertoken_conn_id
        try:
            dag = self.dag
        except (RuntimeError, AttributeError):  # a task outside a DAG (tests call execute() directly)
            dag = None
        task = dag.task_dict.get(self.edit_task_id) if dag is not None and self.edit_task_id else None
        # A mapped edit task keeps its arguments in partial_kwargs; a plain one as attributes.
        partial = getattr(task, "partial_kwargs", None)
        found = partial.get("bettertoken_conn_id") if isinstance(partial, Mapping) else None
        found = found or getattr(task, "bettertoken_conn_id", None)
        return found if isinstance(found, str) and found else BetterTokenHook.default_conn_name

    def _settle_chain(
        self, planned: list[Mapping[str, Any]], manifest: RunManifest, context: Context
    ) -> ChainState | None:
        """Tell the chain's record what this run settled, so that its next run plans after it."""
        ti = context["ti"]
        if not planned or not self.listing_task_id:
            return None
        started = getattr(context.get("dag_run"), "start_date", None)
        started_at, finished_at = (started.timestamp() if started else None), time.time()
        bucket = parse_s3_uri(planned[0]["dest"], "dest").bucket
        record = chain_record(self.s3_hook, bucket, ti.dag_id, ti.run_id, extra_args=self.s3_write_args)

        def settle(current: ChainState | None) -> ChainState | None:
            if current is None:
                return None  # the listing keeps no chain (a forced re-edit of everything)
            # A catalog's chain keeps its edits by source key, a table's by row key.
            source_key_of = {edit["dest"]: chain_key_of(edit, current) for edit in planned}
            return current.settle_run(
                manifest, source_key_of=source_key_of, started_at=started_at, finished_at=finished_at
            )

        with fail_task_on_permanent_error():
            return record.update(settle)

    def _chain_decision(self, ti: Any) -> ChunkDecision | None:
        """What the next-chunk task decided; None if it failed before deciding (or there is none)."""
        if not self.next_chunk_task_id:
            return None
        value = ti.xcom_pull(task_ids=self.next_chunk_task_id, key=DECISION_KEY)
        where = f"XCom {DECISION_KEY!r} of task {self.next_chunk_task_id!r}"
        return None if value is None else ChunkDecision.load(value, where)
