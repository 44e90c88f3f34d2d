"""The spend ledger's records, and the decisions about money: may this edit send another call?

One :class:`OutputLedger` per output object, kept in S3 beside the outputs by
``storage/ledger.py`` with conditional writes. It lists every logical edit that targeted the
output, every call sent for it and how that call ended, and who holds the output now: a
:class:`Claim` with an expiry, renewed while its holder works. A :class:`RunBreaker` per DAG
run counts the edits that ended in cuts, so that a proxy that cuts every request stops the
run instead of every image paying on its own.

Pure code: no I/O, and time comes in as arguments (Unix seconds).
"""

from __future__ import annotations

import dataclasses
import enum
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol

from pydantic import AliasChoices, Field

from airflow_bettertoken.exceptions import BetterTokenConfigError
from airflow_bettertoken.protocol.record import Record, Sums, record
from airflow_bettertoken.protocol.retry import Failure

if TYPE_CHECKING:
    from airflow_bettertoken.protocol.price import Pricing

__all__ = [
    "DEFAULT_CLAIM_SECONDS",
    "DEFAULT_MAX_BILLED_CALLS",
    "Call",
    "Claim",
    "EditEntry",
    "Holder",
    "Outcome",
    "OutputLedger",
    "RunBreaker",
    "RunSpend",
    "SendDecision",
    "SpendGuard",
    "SpendPolicy",
    "Verdict",
    "check_max_billed_calls",
    "likely_cause",
    "may_send",
    "outcome_of_failure",
    "outcome_of_status",
    "run_currency",
    "run_spend",
]

#: Calls per image that may have been billed, ever, before the provider refuses to send another.
DEFAULT_MAX_BILLED_CALLS = 2
#: How long a claim lasts unless renewed; a holder renews it three times as often.
DEFAULT_CLAIM_SECONDS = 90.0
#: Edits of one run in a row that ended in cuts, with no success between them, that stop the run.
CUT_STREAK_LIMIT = 3
# Gateways answer these after reading the request, while the service may still make (and bill) the
# image: 502 when the upstream closed the connection, 504 and Cloudflare's 52x when it took too long.
GATEWAY_STATUSES = frozenset({502, 504, 520, 521, 522, 523, 524})
# Calls "cut after about the same time": within this many seconds, or this fraction, of each other.
_SAME_CUT_SECONDS = 5.0
_SAME_CUT_FRACTION = 0.15


class Outcome(str, enum.Enum):
    """How one call ended, as far as money goes."""

    #: Written down before the call is sent; a call whose sender died stays open, and counts as billed.
    OPEN = "open"
    #: A 200 came back: the image was made and billed, whether or not it was usable.
    PAID = "paid"
    #: Cut after the request was sent (a timeout, a reset, a gateway timeout): it may have been billed.
    MAYBE_BILLED = "maybe billed"
    #: Refused before it was sent, or answered with a refusal (4xx, 429, most 5xx): not billed.
    NOT_BILLED = "not billed"

    @property
    def may_be_billed(self) -> bool:
        return self is not Outcome.NOT_BILLED


def outcome_of_status(status: int) -> Outcome:
    """The outcome of a call that was answered with ``status``."""
    if 200 <= status < 300:
        return Outcome.PAID
    if status in GATEWAY_STATUSES:
        return Outcome.MAYBE_BILLED
    return Outcome.NOT_BILLED


def outcome_of_failure(failure: Failure) -> Outcome:
    """The outcome of a call that got no answer at all."""
    return Outcome.NOT_BILLED if failure is Failure.NOT_SENT else Outcome.MAYBE_BILLED


@dataclass(frozen=True)
class SpendPolicy:
    """The bounds on spend for one image.

    :param max_billed_calls: calls that may have been billed, across every try, run and DAG.
    :param claim_seconds: how long a claim lasts unless its holder renews it.
    """

    max_billed_calls: int = DEFAULT_MAX_BILLED_CALLS
    claim_seconds: float = DEFAULT_CLAIM_SECONDS


def check_max_billed_calls(value: Any, where: str) -> int:
    """A whole number of calls, at least 1: 0 would refuse every edit, and is surely a mistake."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BetterTokenConfigError(
            f"{where} max_billed_calls must be a whole number of at least 1, got {value!r}"
        )
    return value


@record
class Holder:
    """The task instance (and try) that holds an output or sent a call."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    hostname: str

    @property
    def label(self) -> str:
        index = f"[{self.map_index}]" if self.map_index >= 0 else ""
        return f"{self.dag_id}/{self.run_id}/{self.task_id}{index} try {self.try_number} on {self.hostname}"

    @property
    def task_instance(self) -> tuple[str, str, str, int]:
        """The task instance without its try: the same in every try, another for another task instance."""
        return (self.dag_id, self.task_id, self.run_id, self.map_index)

    def in_run(self, dag_id: str, run_id: str) -> bool:
        return (self.dag_id, self.run_id) == (dag_id, run_id)


@record
class Call:
    """One call, written down before it is sent and completed when it ends.

    :param number: counts from 1 across every try, run and DAG of the logical edit.
    :param sent: False for a call whose connection failed before anything was sent: it is no POST.
    :param elapsed_s: seconds from sending to the end: a proxy's cut shows as the same figure each time.
    :param cause: what ended it, e.g. ``HTTP 504`` or ``maybe billed: ReadTimeout``.
    :param evidence_uri: where an unusable paid answer was kept, for the provider's support.
    :param usage: the token counts the answer reported (OpenAI's ``usage``), when it did.
    :param cost: what the call cost, in ``currency``, from the connection's price table: an estimate,
        since the provider's invoice is the truth; None without a price table (or a billed call that
        could not be priced).
    :param cost_estimated: the call may have been billed (it was cut), or its cost is the recent mean
        cost of an image since it reported no usage and the table has no price for its size.
    :param size: the requested size, written with the cost: the recent costs are kept by size.
    """

    number: int
    by: Holder
    token: str
    sent_at: float
    outcome: Outcome = Outcome.OPEN
    ended_at: float | None = None
    elapsed_s: float | None = None
    status: int | None = None
    request_id: str | None = None
    cause: str | None = None
    evidence_uri: str | None = None
    sent: bool = True
    usage: dict[str, Any] | None = None
    cost: Decimal | None = None
    cost_estimated: bool = False
    currency: str | None = None
    size: str | None = None

    @property
    def was_cut(self) -> bool:
        """Cut after it was sent: the kind of ending a proxy with a short timeout causes."""
        return self.outcome is Outcome.MAYBE_BILLED and self.elapsed_s is not None


@record
class Refusal:
    """A call the provider refused to send, and why (``budget`` or ``run``)."""

    by: Holder
    at: float
    why: str


@record
class Stored:
    """The image of a logical edit, written to the output."""

    sha256: str
    at: float
    by: Holder


@record
class EditEntry:
    """One logical edit of the output: the same model, prompt, size, sources and output.

    :param calls: every call sent (or about to be) for it, across every try, run and DAG.
    :param image_call: the number of the paid call whose image was usable.
    :param spilled_uri: where that image waits when it could not be written to the output.
    :param spilled_result: the image's other fields (size, usage, ...), to rebuild the result from it.
    """

    edit_id: str
    # Named ``attempts`` and ``image_attempt`` in format 1.
    calls: Annotated[tuple[Call, ...], Field(validation_alias=AliasChoices("calls", "attempts"))] = ()
    image_call: Annotated[int | None, Field(validation_alias=AliasChoices("image_call", "image_attempt"))] = (
        None
    )
    stored: Stored | None = None
    spilled_uri: str | None = None
    spilled_result: dict[str, Any] | None = None
    refusals: tuple[Refusal, ...] = ()

    @property
    def billed_calls(self) -> int:
        """Calls that may have been billed: paid, maybe billed, and open ones (their sender may be gone)."""
        return sum(1 for call in self.calls if call.outcome.may_be_billed)


@record
class Claim:
    """Who holds the output: only the holder sends calls for it, until the claim expires."""

    token: str
    holder: Holder
    expires_at: float

    def live(self, now: float) -> bool:
        return now < self.expires_at


@record
class OutputLedger(Record):
    """The spend ledger of one output object: its claim and every logical edit that targeted it.

    Format 2 names an edit's calls ``calls`` (format 1: ``attempts``); it reads format 1.
    """

    FORMAT: ClassVar[int] = 2

    output_uri: str
    claim: Claim | None = None
    edits: tuple[EditEntry, ...] = ()

    def entry(self, edit_id: str) -> EditEntry:
        return next((e for e in self.edits if e.edit_id == edit_id), EditEntry(edit_id))

    def with_entry(self, entry: EditEntry) -> OutputLedger:
        others = tuple(e for e in self.edits if e.edit_id != entry.edit_id)
        return dataclasses.replace(self, edits=(*others, entry))

    def with_claim(self, claim: Claim | None) -> OutputLedger:
        return dataclasses.replace(self, claim=claim)

    def held_by(self, token: str, now: float) -> bool:
        return self.claim is not None and self.claim.token == token and self.claim.live(now)

    # -- changes, each returning a new ledger -------------------------------------------------------

    def take_claim(self, claim: Claim, lapsed_cause: str) -> OutputLedger:
        """Hold the output: calls left open by an earlier holder that is gone now count as maybe billed."""
        edits = []
        for entry in self.edits:
            calls = tuple(
                dataclasses.replace(c, outcome=Outcome.MAYBE_BILLED, cause=lapsed_cause)
                if c.outcome is Outcome.OPEN and c.token != claim.token
                else c
                for c in entry.calls
            )
            edits.append(dataclasses.replace(entry, calls=calls))
        return dataclasses.replace(self, claim=claim, edits=tuple(edits))

    def open_call(self, edit_id: str, by: Holder, token: str, now: float) -> tuple[OutputLedger, int]:
        entry = self.entry(edit_id)
        number = max((c.number for c in entry.calls), default=0) + 1
        call = Call(number=number, by=by, token=token, sent_at=now)
        return self.with_entry(dataclasses.replace(entry, calls=(*entry.calls, call))), number

    def end_call(self, edit_id: str, number: int, **ended: Any) -> OutputLedger:
        entry = self.entry(edit_id)
        calls = tuple(dataclasses.replace(c, **ended) if c.number == number else c for c in entry.calls)
        return self.with_entry(dataclasses.replace(entry, calls=calls))

    def refuse(self, edit_id: str, refusal: Refusal) -> OutputLedger:
        entry = self.entry(edit_id)
        return self.with_entry(dataclasses.replace(entry, refusals=(*entry.refusals, refusal)))


class Verdict(enum.Enum):
    SEND = "send"
    WAIT = "wait"
    REFUSE = "refuse"


@dataclass(frozen=True)
class SendDecision:
    """What an edit may do now: send (it holds the claim), wait for another holder, or never send.

    :param claim: for ``WAIT``, the claim waited for.
    """

    verdict: Verdict
    reason: str = ""
    claim: Claim | None = None


def may_send(
    ledger: OutputLedger | None,
    edit_id: str,
    *,
    token: str,
    policy: SpendPolicy,
    now: float,
    read_timeout: float | None = None,
    how_to_raise: str = "",
) -> SendDecision:
    """Whether the edit ``edit_id``, under the claim ``token``, may send another call now.

    :param read_timeout: the client's read timeout, to tell its own timeouts from a proxy's cuts.
    :param how_to_raise: where the user raises the budget, for the refusal's message.
    """
    ledger = ledger or OutputLedger(output_uri="")
    claim = ledger.claim
    if claim is not None and claim.token != token and claim.live(now):
        return SendDecision(Verdict.WAIT, f"{claim.holder.label} holds this output", claim)
    entry = ledger.entry(edit_id)
    if entry.billed_calls >= policy.max_billed_calls:
        return SendDecision(Verdict.REFUSE, explain_budget(entry, policy, read_timeout, how_to_raise))
    return SendDecision(Verdict.SEND)


def explain_budget(
    entry: EditEntry, policy: SpendPolicy, read_timeout: float | None = None, how_to_raise: str = ""
) -> str:
    """Why no call is sent: the likely cause first (what the user acts on), then the budget and each call."""
    billed = [c for c in entry.calls if c.outcome.may_be_billed]
    cause = likely_cause(billed, read_timeout)
    text = (
        "not sent: "
        + (f"{cause}. " if cause else "")
        + f"This image has had {entry.billed_calls} calls that may have been billed, and max_billed_calls is "
        + f"{policy.max_billed_calls} ({'; '.join(_describe(a) for a in billed)})"
    )
    return f"{text}. {how_to_raise}" if how_to_raise else text


def _describe(call: Call) -> str:
    ended = f" after {call.elapsed_s:.0f} s" if call.elapsed_s is not None else ""
    why = f", {call.cause}" if call.cause else ""
    request = f", request id {call.request_id}" if call.request_id else ""
    return f"call {call.number}: {call.outcome.value}{ended}{why}{request}, by {call.by.label}"


def likely_cause(calls: Sequence[Call], read_timeout: float | None = None) -> str | None:
    """What the calls have in common, in words a user can act on; None when nothing stands out."""
    if not calls:
        return None
    if all(c.outcome is Outcome.PAID for c in calls):
        kept = [c.evidence_uri for c in calls if c.evidence_uri]
        where = f" (kept at {', '.join(kept)})" if kept else ""
        return (
            f"each of {len(calls)} answers was paid but unusable{where}: report the request ids to "
            "BetterToken's support"
        )
    cuts = [c.elapsed_s for c in calls if c.was_cut]
    if len(cuts) != len(calls) or len(cuts) < 2:
        return None
    middle = statistics.median(cuts)
    if max(cuts) - min(cuts) > max(_SAME_CUT_SECONDS, _SAME_CUT_FRACTION * middle):
        return None
    if read_timeout is not None and abs(middle - read_timeout) <= _SAME_CUT_SECONDS:
        return (
            f"each of {len(cuts)} calls ended at the read timeout ({read_timeout:.0f} s): the edit takes "
            "longer than that; raise the connection's timeout extra"
        )
    return (
        f"each of {len(cuts)} calls was cut after about {middle:.0f} s: a proxy or load balancer between "
        "this worker and BetterToken closes requests sooner than an edit takes; raise its timeout"
    )


@record
class RunBreaker(Record):
    """The edits of one DAG run that ended in cuts, in a row: enough of them stop the run.

    :param streak: edits in a row that ended in cuts, with no success between them.
    :param diagnosis: the first cut edit's likely cause, for the message of every edit that is stopped.
    """

    dag_id: str
    run_id: str
    streak: int = 0
    diagnosis: str | None = None
    first_cut_output: str | None = None
    tripped_at: float | None = None

    @property
    def tripped(self) -> bool:
        return self.tripped_at is not None

    def after_edit(self, *, cut: bool, output_uri: str, diagnosis: str | None, now: float) -> RunBreaker:
        """The breaker after one edit's try ended: in cuts (``cut``), or in success."""
        if self.tripped:
            return self
        if not cut:
            return dataclasses.replace(self, streak=0, diagnosis=None, first_cut_output=None)
        streak = self.streak + 1
        return dataclasses.replace(
            self,
            streak=streak,
            diagnosis=self.diagnosis or diagnosis,
            first_cut_output=self.first_cut_output or output_uri,
            tripped_at=now if streak >= CUT_STREAK_LIMIT else None,
        )

    def stop_reason(self) -> str:
        """Why an edit of this run is not sent, pointing at the first diagnosis."""
        first = f" First, {self.first_cut_output}: {self.diagnosis}" if self.diagnosis else ""
        return (
            f"not sent: {self.streak} edits of this run in a row ended in calls that were cut after they "
            f"were sent, so the run's remaining edits are stopped before they pay for nothing.{first}"
        )


class SpendGuard(Protocol):
    """What the hook tells the spend ledger around every call it sends (``storage/ledger.py``)."""

    def before_send(self) -> None:
        """Write the call down; raise instead if it must not be sent (budget spent, run stopped)."""

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
        """Write down how the call ended; ``evidence`` is an unusable paid answer, kept for support;
        ``sent`` is False for a call whose connection failed before anything was sent; ``usage`` is
        the answer's token counts and ``pricing`` the connection's price table with the requested
        size (None without a price table), to write down what the call cost."""


@record
class RunSpend(Sums, Record):
    """What one DAG run spent, summed from the ledgers of the outputs it worked on.

    The costs are in the currency of the connection's price table, which the run manifest, the
    summary and the chain keep beside this record (``currency``): it holds numbers only, to add up.

    :param cost: the estimated cost of every billed call that has one: paid, and maybe billed.
    :param cost_estimated: the part of ``cost`` that is the recent mean cost of an image, for calls
        that may have been billed and reported no usage.
    :param calls_unpriced: billed calls without a cost: no price table (or one that did not apply).
    """

    posts: int = 0
    paid: int = 0
    maybe_billed: int = 0
    images_stored: int = 0
    billed_without_image: int = 0
    stopped_by_budget: int = 0
    stopped_by_run: int = 0
    cost: Decimal = Decimal(0)
    cost_estimated: Decimal = Decimal(0)
    calls_unpriced: int = 0


def run_spend(ledgers: Iterable[OutputLedger], dag_id: str, run_id: str) -> RunSpend:
    """The spend of one DAG run: its calls, and its share of each image, from the outputs' ledgers.

    A call is billed without an image unless its image is the one stored; an image counts as
    stored by the run that wrote it.
    """
    total = RunSpend()
    for ledger in ledgers:
        for entry in ledger.edits:
            mine = [c for c in entry.calls if c.by.in_run(dag_id, run_id)]
            gave_the_image = {entry.image_call} if entry.stored is not None else set()
            refusals = [r.why for r in entry.refusals if r.by.in_run(dag_id, run_id)]
            billed = [a for a in mine if a.outcome.may_be_billed]
            total += RunSpend(
                posts=sum(1 for a in mine if a.sent),
                paid=sum(1 for a in mine if a.outcome is Outcome.PAID),
                maybe_billed=sum(1 for a in mine if a.outcome in (Outcome.MAYBE_BILLED, Outcome.OPEN)),
                images_stored=int(entry.stored is not None and entry.stored.by.in_run(dag_id, run_id)),
                billed_without_image=sum(
                    1 for a in mine if a.outcome.may_be_billed and a.number not in gave_the_image
                ),
                stopped_by_budget=refusals.count("budget"),
                stopped_by_run=refusals.count("run"),
                cost=sum((a.cost for a in billed if a.cost is not None), Decimal(0)),
                cost_estimated=sum(
                    (a.cost for a in billed if a.cost is not None and a.cost_estimated), Decimal(0)
                ),
                calls_unpriced=sum(1 for a in billed if a.cost is None),
            )
    return total


def run_currency(ledgers: Iterable[OutputLedger], dag_id: str, run_id: str) -> str | None:
    """The currency of one DAG run's costs: its priced calls'; None when none was priced.

    The price table's currency could change within a run only if the connection were edited
    during it; the last priced call's currency is taken then.
    """
    found = None
    for ledger in ledgers:
        for entry in ledger.edits:
            for call in entry.calls:
                if call.currency and call.by.in_run(dag_id, run_id):
                    found = call.currency
    return found
