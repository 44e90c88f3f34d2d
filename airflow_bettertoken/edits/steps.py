"""The steps of one edit on a worker: look at the output, claim it, send, keep, write, record.

The edit operator runs them in order, and so may any task that makes edits (a table planner, a
re-edit): each step is one method of :class:`EditSteps`, on one :class:`Edit`.

The paid POST is sent here, on the worker, and never in a trigger: this package calls the hook,
and the triggers never import it (``tests/unit/test_layers.py``), since a triggerer restart re-runs
every trigger.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from airflow.providers.common.compat.sdk import Stats

from airflow_bettertoken.exceptions import (
    BetterTokenBudgetError,
    BetterTokenInputError,
    BetterTokenOutputExistsError,
    BetterTokenSizeMismatchError,
    BetterTokenUploadError,
)
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
from airflow_bettertoken.protocol.result import EditResult, EditXCom, existing_output_xcom, sources_metadata
from airflow_bettertoken.protocol.retry import Timing
from airflow_bettertoken.protocol.spend import Claim, Holder, Verdict
from airflow_bettertoken.protocol.wire import MODEL, check_image_count, check_prompt, check_size, fingerprint
from airflow_bettertoken.storage.ledger import SpendLedger
from airflow_bettertoken.storage.locations import S3Location, output_location, parse_dest, parse_s3_uri
from airflow_bettertoken.storage.objects import ImageStore, UploadFailed
from airflow_bettertoken.storage.run_budget import BudgetedGuard, RunBudget
from airflow_bettertoken.storage.s3_io import ObjectRead
from airflow_bettertoken.storage.spill import SpillDir

__all__ = ["IF_EXISTS", "ON_SIZE_MISMATCH", "Edit", "EditSteps", "holder_of", "idempotency_key"]

IF_EXISTS = ("skip", "replace", "fail")
ON_SIZE_MISMATCH = ("record", "warn", "fail")
# Who can upload a kept image without paying again: a kept image in S3, or on this worker's disk.
_WHO_FINDS_IT = {
    True: "a retry on any worker uploads it without paying again",
    False: "a rerun on this worker uploads it without paying again",
}


@dataclass(frozen=True)
class Edit:
    """One logical edit, its inputs checked: the same model, prompt, size, sources and output.

    :param digest: names the logical edit: the same inputs give the same digest on every worker and
        every try.
    """

    prompt: str
    size: str
    source_uris: list[str]
    sources: list[S3Location]
    output: S3Location
    digest: str

    @classmethod
    def check(cls, prompt: str, source: str | list[str], dest: str, size: str) -> Edit:
        """The edit of the operator's rendered arguments; bad input is a :class:`BetterTokenInputError`."""
        prompt = check_prompt(prompt)
        size = check_size(size)
        source_uris = [source] if isinstance(source, str) else list(source)
        check_image_count(len(source_uris))
        sources = [parse_s3_uri(uri, "source") for uri in source_uris]
        output = output_location(parse_dest(dest), sources[0])
        digest = fingerprint(MODEL, prompt, size, source_uris, output.uri)
        return cls(prompt, size, source_uris, sources, output, digest)


def holder_of(ti: Any) -> Holder:
    """The task instance and try doing an edit: the one form of its identity on the edit's path."""
    return Holder(
        dag_id=ti.dag_id,
        run_id=ti.run_id,
        task_id=ti.task_id,
        map_index=ti.map_index,
        try_number=ti.try_number,
        hostname=getattr(ti, "hostname", None) or socket.gethostname(),
    )


def idempotency_key(holder: Holder, digest: str) -> str:
    """The task's identity without its try number, so Airflow's own retries send the same key."""
    return fingerprint(*holder.task_instance, digest)


class EditSteps:
    """The steps of an edit task, with its hook, its store and the policies its arguments set.

    :param if_exists: ``skip``, ``replace`` or ``fail`` (:data:`IF_EXISTS`).
    :param on_size_mismatch: ``record``, ``warn`` or ``fail`` (:data:`ON_SIZE_MISMATCH`).
    :param spill_dir: the worker's last resort for a paid image that S3 would not take.
    :param max_billed_calls: the operator's bound, over the connection's.
    :param log: the task's logger, so that the steps' lines read as the task's.
    :param timing: the clock and sleep of the ledger's conditional writes (virtual in tests).
    :param budget: the run's reservation under ``max_spend``, checked before each call; None without a
        cap (then no request is made for it).
    """

    def __init__(
        self,
        hook: BetterTokenHook,
        store: ImageStore,
        *,
        if_exists: str,
        on_size_mismatch: str,
        spill_dir: str | None,
        max_billed_calls: int | None,
        log: logging.Logger,
        timing: Timing | None = None,
        budget: RunBudget | None = None,
    ) -> None:
        self.hook = hook
        self.budget = budget
        self.store = store
        self.if_exists = if_exists
        self.on_size_mismatch = on_size_mismatch
        self.spill = SpillDir(spill_dir)
        self.max_billed_calls = max_billed_calls
        self.log = log
        self.timing = timing

    # -- look: is the output there already? ---------------------------------------------------------

    def existing_output(self, edit: Edit) -> EditXCom | None:
        """The output, if it exists and ``if_exists="skip"``; None when the edit is to be made."""
        output = edit.output
        existing = self.store.head(output)
        if existing is not None:
            if self.if_exists == "skip":
                self.log.info("%s exists; skipping without an API call", output.uri)
                return self.existing_result(output, existing, edit.source_uris)
            if self.if_exists == "fail":
                raise BetterTokenOutputExistsError(f"{output.uri} exists and if_exists='fail'")
            self.log.info("%s exists and will be replaced", output.uri)
        elif not self.store.bucket_exists(output.bucket):
            raise BetterTokenInputError(f"dest bucket {output.bucket!r} does not exist; create it first")
        return None

    def existing_result(
        self, output: S3Location, head: ObjectRead | None, source_uris: list[str]
    ) -> EditXCom:
        """XCom for an output that exists: the metadata on the object, or its PNG header if it has none."""
        meta = head.metadata if head else {}
        recorded = {k: meta[k] for k in ("sources", "sources-sha256") if k in meta}
        if recorded and recorded != sources_metadata(source_uris):
            raise BetterTokenOutputExistsError(
                f"{output.uri} exists but was made from other sources ({recorded}), so two inputs map to "
                "one output key. Give each edit its own dest, or pass if_exists='replace'"
            )
        if "width" in meta and "height" in meta:
            width, height = int(meta["width"]), int(meta["height"])
        else:
            width, height = self.store.png_size(output)
        return existing_output_xcom(
            output.uri,
            meta,
            width=width,
            height=height,
            nbytes=head.content_length if head else None,
            source_uris=source_uris,
        )

    # -- claim: only the output's holder sends --------------------------------------------------------

    def ledger(self, edit: Edit, holder: Holder) -> SpendLedger:
        """The output's spend ledger, as this task instance and try sees it."""
        # A forced replace is a new logical edit: it pays again, once, for this task instance.
        edit_id = (
            edit.digest
            if self.if_exists != "replace"
            else fingerprint(edit.digest, "replace", holder.task_instance)
        )
        policy = self.hook.spend_policy(self.max_billed_calls)
        return SpendLedger(
            self.store.s3_hook,
            edit.output,
            edit_id,
            holder,
            policy,
            extra_args=self.store.io.extra_args.for_write(),
            how_to_raise=self.hook.how_to_raise_the_budget(policy.max_billed_calls),
            read_timeout=self.hook.read_timeout,
            timing=self.timing,
        )

    def claim(self, ledger: SpendLedger) -> Claim | None:
        """Hold the output; or the other task's claim to wait for (None when this edit holds it now).

        :raises BetterTokenBudgetError: when no call may be sent for the image, ever, or in this run.
        """
        decision = ledger.begin()
        if decision.verdict is Verdict.WAIT:
            return decision.claim
        if decision.verdict is Verdict.REFUSE:
            raise BetterTokenBudgetError(f"{decision.reason} (ledger {ledger.uri})")
        return None

    # -- send, keep, write, record --------------------------------------------------------------------

    def make(self, edit: Edit, ledger: SpendLedger) -> EditXCom:
        """Send (or upload a kept image) and write the output, holding the claim; released however it ends."""
        cut: bool | None = None
        try:
            result = self.paid_image(edit, ledger)
            xcom = self.write(edit, result, ledger)
            cut = False
            return xcom
        except Exception:
            # A paid but unusable answer is no cut: its last call is PAID.
            cut = True if ledger.last_call_was_cut else None
            raise
        finally:
            ledger.finish(cut=cut)

    def paid_image(self, edit: Edit, ledger: SpendLedger) -> EditResult:
        """The image this edit paid for before (kept in S3 or on this worker), or a new paid call."""
        kept = ledger.spilled_result() or self.spill.load(edit.digest)
        if kept is not None:
            self.log.info("Found this output's paid image, kept after a failed upload; uploading it, no call")
            self.hook.verify_png(kept.png)
            return kept
        images = [self.store.read_source(location) for location in edit.sources]
        return self.hook.edit_image(
            edit.prompt,
            images,
            edit.size,
            idempotency_key=idempotency_key(ledger.holder, edit.digest),
            guard=ledger if self.budget is None else BudgetedGuard(ledger, self.budget),
        )

    def write(self, edit: Edit, result: EditResult, ledger: SpendLedger) -> EditXCom:
        """Apply the size policy and upload the PNG; keep it where a retry finds it if that fails."""
        output, source_uris = edit.output, edit.source_uris
        metadata = result.s3_metadata(edit.prompt, source_uris, made_by=ledger.holder)
        if result.size_matches is False:
            message = (
                f"asked for {result.requested_size}, got {result.width}x{result.height} for {output.uri}"
            )
            if self.on_size_mismatch == "fail":
                where = ledger.keep(result, metadata, self.spill, edit.digest)
                raise BetterTokenSizeMismatchError(
                    f"{message}; on_size_mismatch='fail'. "
                    f"The image (sha256 {result.sha256}) is kept at {where}"
                )
            Stats.incr("bettertoken.output.size_mismatch")
            if self.on_size_mismatch == "warn":
                self.log.warning("Size mismatch: %s", message)
        try:
            written = self.store.put_png(
                output,
                result.png,
                metadata,
                create_only=self.if_exists != "replace",
            )
        except UploadFailed as err:
            where = ledger.keep(result, metadata, self.spill, edit.digest)
            raise BetterTokenUploadError(
                f"could not write the paid image to {output.uri} ({err}). It is kept at {where} "
                f"(sha256 {result.sha256}); {_WHO_FINDS_IT[where.startswith('s3://')]}"
            ) from err.cause
        if not written:
            found = self.store.head(output)
            if (found.metadata if found else {}).get("png-sha256") != result.sha256:
                self.log.warning(
                    "Another task wrote %s first; this task's image (sha256 %s) was not stored",
                    output.uri,
                    result.sha256,
                )
                return self.existing_result(output, found, source_uris)
            # Our own write, whose answer was lost: S3 refused the retry because the object is there.
            self.log.info("%s holds this task's image already (a lost answer to its own upload)", output.uri)
        return self.record(edit, result, ledger)

    def record(self, edit: Edit, result: EditResult, ledger: SpendLedger) -> EditXCom:
        """The image is the output: write it down in the ledger, drop the kept copies, report it."""
        ledger.stored(result.sha256)
        self.spill.discard(edit.digest)
        self.log.info(
            "Wrote %s: %dx%d, %d bytes", edit.output.uri, result.width, result.height, len(result.png)
        )
        return result.to_xcom(edit.output.uri, edit.source_uris, **ledger.xcom_figures())
