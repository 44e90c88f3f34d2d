"""Plan the edits under an S3 prefix, ready for ``.expand_kwargs(...)``: only what is pending, in chunks."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import BaseOperator, conf

from airflow_bettertoken.exceptions import BetterTokenInputError, fail_task_on_permanent_error
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
from airflow_bettertoken.operators._spend_cap import ESTIMATE_KEY, SpendCap
from airflow_bettertoken.operators.next_chunk import is_on
from airflow_bettertoken.operators.preflight import preflight
from airflow_bettertoken.protocol.budget import SpendPlan
from airflow_bettertoken.storage.chain import (
    ChainState,
    chain_record,
    progress_line,
    with_reservation,
    with_window_of,
)
from airflow_bettertoken.storage.chunks import plan_chunk
from airflow_bettertoken.storage.findings import FINDINGS_KEY, ListingFindings
from airflow_bettertoken.storage.listing import (
    COUNTS_KEY,
    Plan,
    empty_source_error,
    nearby_prefixes,
    plan_every_edit,
)
from airflow_bettertoken.storage.locations import S3Location, parse_s3_prefix
from airflow_bettertoken.storage.objects import ImageStore
from airflow_bettertoken.storage.s3_extra_args import S3ExtraArgs

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = ["BetterTokenListImagesOperator"]


class BetterTokenListImagesOperator(BaseOperator):
    """List PNG, JPEG and WEBP images under a prefix, each paired with its output under another prefix.

    Returns ``[{"source": ..., "dest": ...}, ...]`` for
    ``BetterTokenImageEditOperator.partial(...).expand_kwargs(...)``, in source key order, so that chunks
    are stable from run to run. An empty list makes Airflow skip the mapped edit.

    A source prefix that holds no image at all fails the task (a mistyped prefix must not make a green
    run that edits nothing), naming the prefix and the prefixes next to it, unless ``allow_empty``.
    Images that are all done already are no error: that run plans nothing and succeeds.

    Paginated LISTs decide what is pending; no object is read. Runs chained by
    :class:`~airflow_bettertoken.operators.next_chunk.BetterTokenNextChunkOperator` share a record
    (``storage/chain.py``): the chain's first run lists the catalog whole, once; every later run
    lists sources only after the keys earlier runs settled, and outputs only across the keys it
    plans, so a chain's listing costs grow with the catalog, not its square. Edits that failed for
    good in an earlier run of the chain are not planned again (unless ``replan_failed``); those that
    may succeed on another try are planned first. The XCom key ``counts`` holds ``images``, ``done``,
    ``pending``, ``planned``, ``remaining`` and ``failed_for_good``; the key ``estimate`` what this run
    and the rest of the catalog should cost (each a range, with the currency and the estimate's basis)
    and the caps' figures; it is logged and kept in the chain's record. First, a preflight checks the
    BetterToken connection (``GET /models``, not paid) and that ``dest_prefix`` can be written (or,
    with ``stage_prefix``, that ``stage_prefix`` can, while ``dest_prefix`` is only read), so that a
    wrong key or bucket fails once, here.

    Keys that have no safe output path (an empty ``//``, ``.`` or ``..`` segment, a control character)
    are skipped, and the listing goes on; they and what the preflight found about the store (whether
    it keeps conditional writes) are in the XCom key ``findings``, which the manifest records.

    :param source_prefix: ``s3://bucket/prefix/`` to list, recursively. (templated)
    :param dest_prefix: ``s3://bucket/prefix/`` for the outputs. (templated)
    :param stage_prefix: ``s3://bucket/prefix/`` where the edits are written instead of ``dest_prefix``,
        for a review gate that publishes them under ``dest_prefix`` once approved: what is pending is
        still decided by ``dest_prefix``, so an image already published is not paid for again. Empty:
        the edits write to ``dest_prefix``. (templated)
    :param only_pending: plan only images whose output does not exist yet. ``False`` plans every image,
        for a forced re-edit with ``if_exists="replace"``.
    :param max_edits: plan at most this many; default ``[core] max_map_length``. The rest is left for
        later runs and counted in ``remaining``.
    :param replan_failed: plan again the edits that failed for good in earlier runs of the chain (a
        forced retry, say after raising ``max_billed_calls``). (templated)
    :param allow_empty: a source prefix with no image is a normal, empty batch (say, a stream that may
        have nothing new), not an error.
    :param preflight: run the preflight checks first.
    :param size: the size the edits ask for, for the estimate of their cost. (templated)
    :param max_spend: the cap on what the whole chain of runs spends, in the connection's price table's
        currency (``"25.00"``, or ``"USD 25.00"``); unset, none. Each run reserves the high end of its
        planned edits' estimate against what the chain's settled runs spent and its other runs reserved,
        and plans only what fits; its edits stop when their calls used the reservation up. When the cap
        kept edits back, the chain stops after this run (see docs/spend.rst for how to resume). (templated)
    :param max_spend_per_run: the cap on what one run spends. (templated)
    :param s3_extra_args: what the edits add to every S3 write, with ``S3Hook``'s meaning, e.g.
        ``{"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "..."}``: the preflight's probe is written
        with them, so it tests what the edits will do. (templated)
    :param bettertoken_conn_id: the BetterToken connection the edits will use.
    :param aws_conn_id: the AWS connection for S3.
    """

    template_fields: Sequence[str] = (
        "source_prefix",
        "dest_prefix",
        "stage_prefix",
        "max_edits",
        "replan_failed",
        "aws_conn_id",
        "s3_extra_args",
        "size",
        "max_spend",
        "max_spend_per_run",
    )

    def __init__(
        self,
        *,
        source_prefix: str,
        dest_prefix: str,
        stage_prefix: str | None = None,
        only_pending: bool = True,
        max_edits: int | str | None = None,
        replan_failed: bool | str = False,
        allow_empty: bool = False,
        preflight: bool = True,
        size: str = "auto",
        max_spend: str | None = None,
        max_spend_per_run: str | None = None,
        s3_extra_args: dict[str, Any] | None = None,
        bettertoken_conn_id: str = BetterTokenHook.default_conn_name,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source_prefix = source_prefix
        self.dest_prefix = dest_prefix
        self.stage_prefix = stage_prefix
        self.only_pending = only_pending
        self.max_edits = max_edits
        self.replan_failed = replan_failed
        self.allow_empty = allow_empty
        self.preflight = preflight
        self.size = size
        self.max_spend = max_spend
        self.max_spend_per_run = max_spend_per_run
        self.s3_extra_args = s3_extra_args
        self.bettertoken_conn_id = bettertoken_conn_id
        self.aws_conn_id = aws_conn_id
        S3ExtraArgs.check_literal(s3_extra_args)

    @cached_property
    def store(self) -> ImageStore:
        return ImageStore(S3Hook(aws_conn_id=self.aws_conn_id), s3_extra_args=self.s3_extra_args)

    def execute(self, context: Context) -> list[dict[str, str]]:
        with fail_task_on_permanent_error():
            source = parse_s3_prefix(self.source_prefix, "source_prefix")
            dest = parse_s3_prefix(self.dest_prefix, "dest_prefix")
            limit = self._max_edits()
            store_check = None
            if self.preflight:
                # With a review gate, the probe writes where the edits go, never under dest_prefix.
                stage = parse_s3_prefix(self.stage_prefix, "stage_prefix") if self.stage_prefix else None
                store_check = preflight(
                    BetterTokenHook(self.bettertoken_conn_id), self.store, dest, stage=stage
                )
                for warning in store_check.warnings:
                    self.log.warning("Preflight: %s", warning)
            cap = self._cap(context["ti"], dest)
            if self.only_pending:
                plan, chain, spend = self._plan_chunk(context["ti"], source, dest, limit, cap)
            else:
                before = cap.before_planning(None, wanted=limit)
                plan, chain = plan_every_edit(self.store, source, dest, max_edits=before.planned), None
                self._check_not_empty(source, plan)
                spend = cap.after_planning(
                    before, planned=len(plan.edits), pending=plan.pending, remaining=plan.remaining
                )
                cap.reserve(spend)
        context["ti"].xcom_push(key=COUNTS_KEY, value=plan.counts.dump())
        context["ti"].xcom_push(key=ESTIMATE_KEY, value=spend.dump())
        self.log.info("%s", cap.line(spend))
        findings = ListingFindings.of(plan.skipped, store_check)
        context["ti"].xcom_push(key=FINDINGS_KEY, value=findings.dump())
        self.log.info("%s", progress_line(plan, chain, self.source_prefix))
        for skipped in plan.skipped[:10]:
            self.log.warning("Skipped %r: %s", skipped.key, skipped.reason)
        if len(plan.skipped) > 10:
            self.log.warning(
                "... and %d more skipped keys; the manifest lists up to 100", len(plan.skipped) - 10
            )
        if plan.remaining:
            self.log.info(
                "%d pending images are left for later runs (max_edits=%d per run)", plan.remaining, limit
            )
        return self._staged(plan.edits, dest)

    def _check_not_empty(self, source: S3Location, plan: Plan) -> None:
        """Fail on a source with no image, before anything is recorded, unless the DAG allows it."""
        if plan.images:
            return
        if self.allow_empty:
            self.log.info("No image under %s; allow_empty is set, so nothing is edited", source.uri)
            return
        nearby = nearby_prefixes(self.store.io, source)
        with fail_task_on_permanent_error():
            raise empty_source_error(source, "source_prefix", nearby, skipped=len(plan.skipped))

    def _staged(self, edits: list[dict[str, str]], dest: S3Location) -> list[dict[str, str]]:
        """The planned edits, written under ``stage_prefix`` instead of ``dest_prefix`` when it is set."""
        if not self.stage_prefix:
            return edits
        with fail_task_on_permanent_error():
            stage = parse_s3_prefix(self.stage_prefix, "stage_prefix")
        staged = []
        for edit in edits:
            rest = edit["dest"][len(dest.uri) :] if edit["dest"].startswith(dest.uri) else None
            if rest is None:
                raise BetterTokenInputError(f"planned dest {edit['dest']!r} is not under {dest.uri!r}")
            staged.append({**edit, "dest": stage.uri + rest})
        return staged

    def _cap(self, ti: Any, dest: S3Location) -> SpendCap:
        return SpendCap(
            self.store.io,
            BetterTokenHook(self.bettertoken_conn_id),
            bucket=dest.bucket,
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            size=self.size,
            max_spend=self.max_spend,
            max_spend_per_run=self.max_spend_per_run,
        )

    def _plan_chunk(
        self, ti: Any, source: S3Location, dest: S3Location, limit: int, cap: SpendCap
    ) -> tuple[Plan, ChainState, SpendPlan]:
        """This run's chunk of its chain, what fits its caps, and the chain's record with this run's
        window and reservation written in."""
        record = chain_record(
            self.store.s3_hook, dest.bucket, ti.dag_id, ti.run_id, extra_args=self.s3_extra_args
        )
        chain = record.read()
        same = chain if chain is not None and chain.source_uri == source.uri else None
        before = cap.before_planning(same, wanted=limit, chain_location=record.location)
        chunk = plan_chunk(
            self.store,
            source,
            dest,
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            chain=chain,
            max_edits=before.planned,
            replan_failed=is_on(self.replan_failed),
        )
        # Checked before the chain's record is written: a mistyped prefix leaves no chain behind.
        self._check_not_empty(source, chunk.plan)
        plan = chunk.plan
        spend = cap.after_planning(
            before, planned=len(plan.edits), pending=plan.pending, remaining=plan.remaining
        )
        record.update(
            lambda current: with_reservation(
                with_window_of(current, chunk.state, ti.run_id), ti.run_id, spend
            )
        )
        cap.reserve(spend)
        return plan, chunk.state, spend

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
