"""Edit a large image set in chunks: after a run that made progress, trigger the next while work remains."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowSkipException
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator

from airflow_bettertoken.operators._spend_cap import ESTIMATE_KEY
from airflow_bettertoken.operators._xcom import load_records, materialize, task_id_of
from airflow_bettertoken.protocol.budget import SpendPlan, is_blocked_by_budget
from airflow_bettertoken.protocol.record import Record, record
from airflow_bettertoken.protocol.result import EditFailure, EditXCom
from airflow_bettertoken.storage.chain import next_chunk_run_id
from airflow_bettertoken.storage.listing import COUNTS_KEY, ListingCounts

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = ["BetterTokenNextChunkOperator", "ChunkDecision", "is_on", "next_chunk_run_id"]

#: The XCom key of the decision (:class:`ChunkDecision`).
DECISION_KEY = "next_chunk"


@record
class ChunkDecision(Record):
    """Whether a run triggers the next chunk's run, pushed for the manifest.

    :param next_run_id: the run triggered, or None when none is.
    :param reason: why none is, in words for the log and the manifest; empty when one is.
    """

    next_run_id: str | None
    reason: str


def is_on(value: Any) -> bool:
    """A flag that may arrive rendered from a template, as the text ``"True"``."""
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


class BetterTokenNextChunkOperator(TriggerDagRunOperator):
    """Trigger the next run of this DAG, with the same conf, while planned-but-not-done images remain.

    It triggers only when ``until_done`` is on, the listing left ``remaining > 0``, and this run
    settled at least one edit: done, or failed for good (an edit that failed for good is not planned
    again, so the next chunk goes to edits that can succeed). A run that settled nothing (every edit
    met a failure that a retry might heal, such as an expired key) never triggers another, so it
    cannot loop and keep paying. Nor does it trigger when the chain's ``max_spend`` stopped it: an
    edit of this run was blocked by budget, or the listing planned fewer edits than it would have
    because the rest did not fit the cap; the log says what was spent and how to resume (trigger the
    next chunk's run id with a higher ``max_spend`` in its conf). Otherwise it is skipped. With
    ``max_active_runs=1`` the runs follow each other. A run cleared and run again finds its next run
    there already and leaves it be. Its
    decision is pushed as XCom ``next_chunk`` (``{"next_run_id", "reason"}``) for the manifest.

    :param edits: the listing's output: ``list_task.output``; its ``counts`` XCom says what remains.
    :param results: the mapped edit's output: ``edit_task.output``. (templated)
    :param until_done: whether to go on; may be a template such as ``"{{ params.until_done }}"``.
    :param conf_updates: changes to the conf the next run gets, e.g. to pin a day. (templated)
    """

    # The inherited "Triggered DAG" link looks up an XCom that a skipped chain never writes, and logs an
    # error each time; the manifest records the next run's id instead.
    operator_extra_links = ()
    template_fields: Sequence[str] = (
        *TriggerDagRunOperator.template_fields,
        "results",
        "failures",
        "until_done",
        "conf_updates",
    )

    def __init__(
        self,
        *,
        edits: Any,
        results: Any,
        until_done: bool | str = False,
        conf_updates: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        # A cleared run finds the run it triggered before: that one goes on (or went on) by itself.
        kwargs.setdefault("skip_when_already_exists", True)
        super().__init__(trigger_dag_id="{{ dag.dag_id }}", **kwargs)
        self.listing_task_id = task_id_of(edits)
        self.edit_task_id = task_id_of(results)
        self.results = results
        # The failed edits' records, which say whether they failed for good.
        self.failures = results["failure"] if task_id_of(results) else None
        self.until_done = until_done
        self.conf_updates = conf_updates or {}

    def execute(self, context: Context) -> None:
        ti = context["ti"]
        value = ti.xcom_pull(task_ids=self.listing_task_id, key=COUNTS_KEY)
        where = f"XCom {COUNTS_KEY!r} of task {self.listing_task_id!r}"
        counts = ListingCounts.load(value, where) if value is not None else None
        finished = len(load_records(EditXCom, materialize(self.results), "return_value", self.edit_task_id))
        failures = load_records(EditFailure, materialize(self.failures), "failure", self.edit_task_id)
        for_good = sum(1 for failure in failures if failure.for_good)
        remaining = counts.remaining if counts else 0
        given_up = (counts.failed_for_good if counts else 0) + for_good
        left_alone = (
            f"; {given_up} edits failed for good and are not planned again (their reasons are in the "
            "manifests): trigger with retry_failed to try them once more"
            if given_up
            else ""
        )
        blocked = sum(1 for failure in failures if is_blocked_by_budget(failure))
        spend = ti.xcom_pull(task_ids=self.listing_task_id, key=ESTIMATE_KEY)
        plan = (
            SpendPlan.load(spend, f"XCom {ESTIMATE_KEY!r} of task {self.listing_task_id!r}")
            if spend
            else None
        )
        # The cap is told first: with until_done off too, the user learns how to go on under it.
        if blocked or (plan is not None and plan.stopped_by_cap):
            reason = self._stopped_by_cap(context, plan, blocked, remaining)
            self.log.warning("%s", reason)
        elif not is_on(self.until_done):
            reason = "until_done is off: this run is the only one"
        elif not remaining:
            reason = f"no images remain to be planned: this was the last run{left_alone}"
        elif not finished and not for_good:
            reason = (
                f"{remaining} images remain, but this run settled no edit, so no next run is triggered "
                "(it would meet the same failure); fix the cause and trigger again"
            )
        else:
            reason = ""
        run_id = None if reason else next_chunk_run_id(ti.run_id)
        # The decision, for the manifest; a failure before this line leaves none, and the manifest says so.
        ti.xcom_push(key=DECISION_KEY, value=ChunkDecision(run_id, reason).dump())
        if reason:
            raise AirflowSkipException(reason)
        self.trigger_run_id = run_id
        self.conf = {**(context["dag_run"].conf or {}), **self.conf_updates}
        self.log.info(
            "%d edits done and %d failed for good in this run, %d images remain: triggering %s",
            finished,
            for_good,
            remaining,
            run_id,
        )
        super().execute(context)

    def _stopped_by_cap(self, context: Context, plan: SpendPlan | None, blocked: int, remaining: int) -> str:
        """Why the chain stops at its cap, what it spent, and the trigger that resumes it."""
        from airflow_bettertoken.protocol.price import money

        ti = context["ti"]
        currency = plan.currency if plan and plan.currency else ""
        figures = ""
        if plan is not None and plan.max_spend is not None and currency:
            figures = (
                f" (max_spend {money(plan.max_spend, currency)}: {money(plan.spent, currency)} spent by the "
                f"chain's earlier runs, this run reserved {money(plan.reservation or 0, currency)})"
            )
        conf = {**(context["dag_run"].conf or {}), **self.conf_updates, "max_spend": "<a higher cap>"}
        next_run = next_chunk_run_id(ti.run_id)
        return (
            f"the chain's spend cap is reached{figures}: {blocked} edits of this run were blocked by budget "
            f"and {remaining} images remain unplanned, so no next run is triggered. To resume, paying "
            f"nothing again for what is done: airflow dags trigger {ti.dag_id} --run-id {next_run} "
            f"--conf '{json.dumps(conf)}' (docs/spend.rst, 'The cap')"
        )
