"""The spend ledger in S3: every call that may be billed is written down before it is sent.

Kept under the destination bucket's reserved prefix ``_bettertoken/``, beside the outputs, so
that every worker, try, run and DAG that would make the same output sees the same record::

    _bettertoken/ledger/<output key>.json      the output's ledger (protocol/spend.OutputLedger)
    _bettertoken/runs/<dag id>/<run id>.json   a run's breaker: its edits that ended in cuts, in a row
    _bettertoken/evidence/<output key>/...     unusable paid answers, kept for the provider's support
    _bettertoken/spill/<output key>...         paid images that could not be written to the output

Every change is a conditional write (``storage/records.py``); the decisions are the pure
functions of ``protocol/spend.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from airflow_bettertoken.exceptions import (
    BetterTokenBudgetError,
    BetterTokenClaimLostError,
    BetterTokenError,
    BetterTokenStorageError,
)
from airflow_bettertoken.protocol.price import Pricing
from airflow_bettertoken.protocol.result import EditResult
from airflow_bettertoken.protocol.retry import Timing
from airflow_bettertoken.protocol.spend import (
    Claim,
    EditEntry,
    Holder,
    Outcome,
    OutputLedger,
    Refusal,
    RunBreaker,
    SendDecision,
    SpendPolicy,
    Stored,
    Verdict,
    likely_cause,
    may_send,
)
from airflow_bettertoken.storage.costs import read_cost_history
from airflow_bettertoken.storage.locations import RESERVED_PREFIX, S3Location
from airflow_bettertoken.storage.records import ConditionalRecord
from airflow_bettertoken.storage.s3_io import S3IO
from airflow_bettertoken.storage.spill import SpillDir
from airflow_bettertoken.storage.typed_record import TypedRecord

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

__all__ = [
    "RESERVED_PREFIX",
    "SpendLedger",
    "breaker_location",
    "ledger_location",
    "read_ledger",
    "read_ledgers",
]

log = logging.getLogger(__name__)

# GETs in flight when reading many ledgers.
_PARALLEL_READS = 8
_LAPSED = "its sender stopped renewing its claim before the call ended (the worker may have died)"


def ledger_location(output: S3Location) -> S3Location:
    return S3Location(output.bucket, f"{RESERVED_PREFIX}ledger/{output.key}.json")


def breaker_location(bucket: str, dag_id: str, run_id: str) -> S3Location:
    run = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id)
    return S3Location(bucket, f"{RESERVED_PREFIX}runs/{dag_id}/{run}.json")


def _evidence_location(output: S3Location, edit_id: str, number: int) -> S3Location:
    return S3Location(
        output.bucket, f"{RESERVED_PREFIX}evidence/{output.key}/{edit_id[:16]}-call-{number}.bin"
    )


def _spill_location(output: S3Location, edit_id: str) -> S3Location:
    return S3Location(output.bucket, f"{RESERVED_PREFIX}spill/{output.key}.{edit_id[:16]}")


def read_ledger(
    s3_hook: S3Hook, output: S3Location, *, extra_args: Mapping[str, Any] | None = None
) -> OutputLedger | None:
    """The output's ledger as S3 has it now, or None when nothing was ever sent for it (or a 403 hides it).

    :param extra_args: the ``s3_extra_args`` of the edits; the GET carries their read arguments.
    :raises BetterTokenRecordError: when the ledger is there but cannot be read.
    """
    record = ConditionalRecord(s3_hook, ledger_location(output), extra_args=extra_args)
    return TypedRecord(OutputLedger, record).read()


def read_ledgers(
    s3_hook: S3Hook, outputs: Sequence[S3Location], *, extra_args: Mapping[str, Any] | None = None
) -> list[OutputLedger]:
    """The ledgers of many outputs, a few GETs at a time (a run may have planned a thousand edits)."""
    S3IO(s3_hook, extra_args).client  # noqa: B018 (one client, made before the threads share it)
    with ThreadPoolExecutor(max_workers=_PARALLEL_READS) as pool:
        found = pool.map(lambda output: read_ledger(s3_hook, output, extra_args=extra_args), outputs)
        return [ledger for ledger in found if ledger is not None]


class SpendLedger:
    """One edit's view of its output's ledger: its claim, its calls, and its run's breaker.

    It is the hook's :class:`~airflow_bettertoken.protocol.spend.SpendGuard`. While it holds the
    claim, a thread renews it every third of ``policy.claim_seconds``, so that a holder that died
    is noticed within ``claim_seconds`` and not after the read timeout.

    :param holder: the task instance and try doing the edit.
    :param how_to_raise: where the user raises the budget, for refusal messages.
    :param read_timeout: the client's read timeout, to tell its own timeouts from a proxy's cuts.
    :param timing: the sleep and jitter between the rounds of its conditional writes.
    """

    def __init__(
        self,
        s3_hook: S3Hook,
        output: S3Location,
        edit_id: str,
        holder: Holder,
        policy: SpendPolicy,
        *,
        extra_args: Mapping[str, Any] | None = None,
        how_to_raise: str = "",
        read_timeout: float | None = None,
        clock: Callable[[], float] = time.time,
        timing: Timing | None = None,
    ) -> None:
        self.s3_hook = s3_hook
        self.output = output
        self.edit_id = edit_id
        self.holder = holder
        self.policy = policy
        self.extra_args = dict(extra_args or {})
        self.io = S3IO(s3_hook, extra_args, timing)
        self.how_to_raise = how_to_raise
        self.read_timeout = read_timeout
        self.clock = clock
        self.token = uuid.uuid4().hex
        self._record = TypedRecord(
            OutputLedger,
            ConditionalRecord(s3_hook, ledger_location(output), extra_args=extra_args, timing=timing),
        )
        self._breaker = TypedRecord(
            RunBreaker,
            ConditionalRecord(
                s3_hook,
                breaker_location(output.bucket, holder.dag_id, holder.run_id),
                extra_args=extra_args,
                timing=timing,
            ),
        )
        self._lock = threading.Lock()
        self._stop_renewing = threading.Event()
        self._renewer: threading.Thread | None = None
        self._lost_claim = False
        self._open_call: int | None = None
        self._calls_sent = 0
        self._breaker_state: RunBreaker | None = None
        #: The ledger as this edit last read or wrote it.
        self.ledger: OutputLedger | None = None
        #: Where the last unusable paid answer was kept.
        self.evidence_uri: str | None = None

    @property
    def uri(self) -> str:
        return self._record.location.uri

    @property
    def entry(self) -> EditEntry:
        """This logical edit's entry, as last read or written."""
        return (self.ledger or OutputLedger(self.output.uri)).entry(self.edit_id)

    # -- holding the output ---------------------------------------------------------------------------

    def begin(self) -> SendDecision:
        """Take the claim on the output if this edit may send; otherwise say whom to wait for, or why not.

        A stopped run and a spent budget are written down as refusals.
        """
        if self._run_stopped():
            return SendDecision(Verdict.REFUSE, self._breaker_state.stop_reason())
        decisions: list[SendDecision] = []

        def take(ledger: OutputLedger, now: float) -> OutputLedger | None:
            decision = self._decide(ledger, now)
            decisions[:] = [decision]
            if decision.verdict is Verdict.WAIT:
                return None
            if decision.verdict is Verdict.REFUSE:
                return ledger.refuse(self.edit_id, Refusal(self.holder, now, "budget"))
            return ledger.take_claim(Claim(self.token, self.holder, now + self.policy.claim_seconds), _LAPSED)

        self._change(take)
        [decision] = decisions
        if decision.verdict is Verdict.SEND:
            self._start_renewing()
        return decision

    def finish(self, *, cut: bool | None) -> None:
        """Release the claim, and tell the run's breaker how this edit's try ended.

        :param cut: True when it ended in calls cut after sending, False on success, None otherwise.
        """
        self._stop_renewing.set()
        if self._renewer is not None:
            self._renewer.join()
        self._change(lambda ledger, now: ledger.with_claim(None) if self._holds(ledger) else None)
        if cut is not None:
            self._tell_breaker(cut)

    # -- the hook's guard -----------------------------------------------------------------------------

    def before_send(self) -> None:
        if self._lost_claim:
            raise BetterTokenClaimLostError(
                f"not sent: this task's claim on {self.output.uri} lapsed and another task took the output "
                f"over ({self.uri})"
            )
        # The first call follows begin(), which has just read the breaker; later ones read it again.
        if self._calls_sent and self._run_stopped():
            raise BetterTokenBudgetError(self._breaker_state.stop_reason())
        self._calls_sent += 1
        refused: list[str] = []

        def open_call(ledger: OutputLedger, now: float) -> OutputLedger:
            decision = self._decide(ledger, now)
            if decision.verdict is not Verdict.SEND:
                refused[:] = [decision.reason]
                return ledger.refuse(self.edit_id, Refusal(self.holder, now, "budget"))
            refused.clear()
            ledger, self._open_call = ledger.open_call(self.edit_id, self.holder, self.token, now)
            return ledger

        self._change(open_call)
        if refused:
            raise BetterTokenBudgetError(f"{refused[0]} (ledger {self.uri})")

    def after_call(
        self,
        outcome: Outcome,
        *,
        elapsed_s: float,
        cause: str,
        status: int | None = None,
        request_id: str | None = None,
        evidence: bytes | bytearray | None = None,
        sent: bool = True,
        usage: Mapping[str, Any] | None = None,
        pricing: Pricing | None = None,
    ) -> None:
        number = self._open_call
        if number is None:
            return
        evidence_uri = self._keep_evidence(number, evidence, request_id) if evidence is not None else None
        self.evidence_uri = evidence_uri or self.evidence_uri
        usable = outcome is Outcome.PAID and evidence is None
        priced = self._cost(outcome, usage, pricing)

        def end_call(ledger: OutputLedger, now: float) -> OutputLedger:
            ledger = ledger.end_call(
                self.edit_id,
                number,
                outcome=outcome,
                ended_at=now,
                elapsed_s=round(elapsed_s, 3),
                status=status,
                request_id=request_id,
                cause=cause,
                evidence_uri=evidence_uri,
                sent=sent,
                usage=dict(usage) if usage else None,
                **priced,
            )
            if usable:
                entry = dataclasses.replace(ledger.entry(self.edit_id), image_call=number)
                ledger = ledger.with_entry(entry)
            return ledger

        self._change(end_call)
        self._open_call = None

    def _cost(
        self, outcome: Outcome, usage: Mapping[str, Any] | None, pricing: Pricing | None
    ) -> dict[str, Any]:
        """The call's cost fields: from its usage or the price of an image; a call that may have been
        billed and reported no usage is estimated (``cost_estimated``). Empty without a price table."""
        if pricing is None or not outcome.may_be_billed:
            return {}
        cost = pricing.cost_of(usage)
        # Whether a cut call was billed at all is a guess, so its cost is an estimate however priced.
        estimated = outcome is not Outcome.PAID
        if cost is None:
            cost, estimated = self._recent_cost(pricing), True
        if cost is None:
            return {}
        return {"cost": cost, "cost_estimated": estimated, "currency": pricing.currency, "size": pricing.size}

    def _recent_cost(self, pricing: Pricing) -> Decimal | None:
        """The recent mean cost of an image of this size (``storage/costs.py``), for a call that reported
        no usage; None when none is known, or it cannot be read (the call is then left unpriced)."""
        try:
            history = read_cost_history(
                self.s3_hook, self.output.bucket, pricing.conn_id, extra_args=self.extra_args
            )
        except (BetterTokenError, ClientError, BotoCoreError) as err:
            log.warning("Could not read the recent costs to estimate this call's: %s", err)
            return None
        if history is None or history.currency != pricing.currency:
            return None
        return history.mean_cost(pricing.size)

    # -- the image after it was paid for ----------------------------------------------------------------

    def stored(self, sha256: str) -> None:
        """The image is the output now: release the claim; a spilled copy of it is no longer needed."""
        spilled = self.entry.spilled_uri

        def store(ledger: OutputLedger, now: float) -> OutputLedger:
            entry = ledger.entry(self.edit_id)
            stored = Stored(sha256=sha256, at=now, by=self.holder)
            ledger = ledger.with_entry(
                dataclasses.replace(entry, stored=stored, spilled_uri=None, spilled_result=None)
            )
            # The output exists now, so the claim is of no more use: released in the same write.
            return ledger.with_claim(None) if self._holds(ledger) else ledger

        self._change(store)
        if spilled:
            self.io.delete(_spill_location(self.output, self.edit_id))

    def spill(self, result: EditResult, metadata: Mapping[str, str]) -> str:
        """Keep a paid image in S3 beside the ledger, where a retry on any worker finds it; its URI."""
        location = _spill_location(self.output, self.edit_id)
        self.io.put(location, result.png, content_type="image/png", metadata=metadata)
        fields = result.to_spill_record()

        def keep(ledger: OutputLedger, now: float) -> OutputLedger:
            entry = ledger.entry(self.edit_id)
            return ledger.with_entry(
                dataclasses.replace(entry, spilled_uri=location.uri, spilled_result=fields)
            )

        self._change(keep)
        return location.uri

    def spilled_result(self) -> EditResult | None:
        """The paid image kept in S3 for this edit, if any; the caller checks its PNG again."""
        entry = self.entry
        if not entry.spilled_uri or not entry.spilled_result:
            return None
        found = self.io.get(_spill_location(self.output, self.edit_id))
        if not found.found or found.body is None:
            return None  # deleted once stored; a 403 is read as that too (no s3:ListBucket)
        return EditResult.from_spill_record(found.body, entry.spilled_result, f"{self.uri} (spilled_result)")

    def keep(self, result: EditResult, metadata: Mapping[str, str], local: SpillDir, digest: str) -> str:
        """Keep a paid image that is not in its output: in S3 beside the ledger if S3 takes it, else
        in the worker's spill directory. Where it is: an ``s3://`` URI or a local path."""
        try:
            return self.spill(result, metadata)
        except (BetterTokenStorageError, ClientError, BotoCoreError) as err:
            log.warning("Could not keep the paid image in S3 (%s); keeping it on this worker", err)
            return str(local.save(digest, result))

    def xcom_figures(self) -> dict[str, Any]:
        """The spend figures of the edit task's XCom: this task instance's POSTs, and the image's."""
        entry = self.entry
        mine = [c for c in entry.calls if c.sent and c.by.task_instance == self.holder.task_instance]
        return {"calls": len(mine), "billed_calls": entry.billed_calls, "ledger_uri": self.uri}

    @property
    def diagnosis(self) -> str | None:
        """The likely cause of this edit's billed calls, when they have one in common."""
        billed = [c for c in self.entry.calls if c.outcome.may_be_billed]
        return likely_cause(billed, self.read_timeout)

    @property
    def last_call_was_cut(self) -> bool:
        """Whether this edit's try ended in a call that was cut after it was sent."""
        mine = [c for c in self.entry.calls if c.token == self.token]
        return bool(mine) and mine[-1].was_cut

    # -- inside ---------------------------------------------------------------------------------------

    def _decide(self, ledger: OutputLedger, now: float) -> SendDecision:
        return may_send(
            ledger,
            self.edit_id,
            token=self.token,
            policy=self.policy,
            now=now,
            read_timeout=self.read_timeout,
            how_to_raise=self.how_to_raise,
        )

    def _holds(self, ledger: OutputLedger) -> bool:
        return ledger.claim is not None and ledger.claim.token == self.token

    def _change(self, change: Callable[[OutputLedger, float], OutputLedger | None]) -> None:
        """Apply a change to the latest ledger, written conditionally; the renewer and the task take turns."""

        def on_ledger(ledger: OutputLedger | None) -> OutputLedger | None:
            return change(ledger or OutputLedger(self.output.uri), self.clock())

        with self._lock:
            self.ledger = self._record.update(on_ledger)

    def _refuse(self, why: str) -> None:
        self._change(lambda ledger, now: ledger.refuse(self.edit_id, Refusal(self.holder, now, why)))

    def _keep_evidence(self, number: int, evidence: bytes | bytearray, request_id: str | None) -> str | None:
        """Write an unusable paid answer to S3; its URI, or None if even that failed (then it is logged)."""
        location = _evidence_location(self.output, self.edit_id, number)
        try:
            self.io.put(
                location,
                bytes(evidence),
                metadata={"request-id": request_id or "", "output": self.output.uri},
            )
        except BetterTokenStorageError as err:
            log.warning("Could not keep the unusable paid answer at %s: %s", location.uri, err)
            return None
        return location.uri

    def _run_stopped(self) -> bool:
        """Read the run's breaker; if it has tripped, write this edit's refusal down."""
        self._breaker_state = self._breaker.read()
        if self._breaker_state is None or not self._breaker_state.tripped:
            return False
        self._refuse("run")
        return True

    def _tell_breaker(self, cut: bool) -> None:
        diagnosis = self.diagnosis

        def after_edit(breaker: RunBreaker | None) -> RunBreaker | None:
            if breaker is None and not cut:
                return None  # nothing to reset: the run has had no cut edits
            breaker = breaker or RunBreaker(self.holder.dag_id, self.holder.run_id)
            if not cut and breaker.streak == 0:
                return None
            return breaker.after_edit(
                cut=cut, output_uri=self.output.uri, diagnosis=diagnosis, now=self.clock()
            )

        self._breaker.update(after_edit)

    def _start_renewing(self) -> None:
        self._renewer = threading.Thread(target=self._renew, name="bettertoken-claim", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        interval = self.policy.claim_seconds / 3

        def extend(ledger: OutputLedger, now: float) -> OutputLedger | None:
            if not self._holds(ledger):
                self._lost_claim = True
                return None
            claim = dataclasses.replace(ledger.claim, expires_at=now + self.policy.claim_seconds)
            return ledger.with_claim(claim)

        while not self._stop_renewing.wait(interval) and not self._lost_claim:
            try:
                self._change(extend)
            except Exception as err:  # the next round tries again; the claim lasts claim_seconds
                log.warning("Could not renew the claim on %s: %s", self.output.uri, err)
