"""The review gate's record and its decisions: pure functions of one JSON document, tested by table.

One record per DAG run (``storage/review.py`` keeps it in S3 with conditional writes). It holds each
staged image (by its key), the decisions reviewers made on it, and how each round of the gate ended:

- a round **opens** when the gate task starts waiting: the images of that round become ``pending``;
- reviewers **decide** on pending images (approve, reject, re-edit with a revised prompt and size):
  the latest decision counts, and every one is kept in the image's history with who and when;
- the round **closes** when the gate's human-in-the-loop task is answered (or times out): every
  pending image takes its latest decision, or the DAG author's default when it has none. Approved
  images are then published, re-edits become new images of the next round, rejected ones stay staged.

Every function here returns a new record and may run again on a fresher one (a lost conditional
write), so two reviewers who submit at once both keep their decisions.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.protocol.wire import SIZES, check_prompt

__all__ = [
    "UNDECIDED_CHOICES",
    "Action",
    "Decision",
    "ItemState",
    "ReviewItem",
    "ReviewRecord",
    "RoundClose",
    "reedit_key",
]

FORMAT = 1


class Action(str, enum.Enum):
    """What a reviewer decides for one image."""

    APPROVE = "approve"
    REJECT = "reject"
    REEDIT = "reedit"


class ItemState(str, enum.Enum):
    """Where one staged image stands."""

    PENDING = "pending"  # its round is open: reviewers may decide
    APPROVED = "approved"  # approved at its round's close, not yet copied
    PUBLISHED = "published"  # copied under the publish prefix
    REJECTED = "rejected"  # stays staged, never published
    REEDITED = "reedited"  # a new edit with the revised prompt replaces it in the next round


#: What the gate does with an image nobody decided on when its round closes; the DAG author chooses.
UNDECIDED_CHOICES = ("reject", "approve")


@dataclass(frozen=True)
class Decision:
    """One reviewer's decision on one image, as the record keeps it."""

    action: Action
    by: str
    at: str
    prompt: str | None = None
    size: str | None = None
    round: int = 1

    def to_json(self) -> dict[str, Any]:
        data = {"action": self.action.value, "by": self.by, "at": self.at, "round": self.round}
        if self.action is Action.REEDIT:
            data.update(prompt=self.prompt, size=self.size)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        return cls(
            Action(data["action"]),
            str(data["by"]),
            str(data["at"]),
            data.get("prompt"),
            data.get("size"),
            int(data.get("round", 1)),
        )

    @classmethod
    def checked(
        cls, action: str, by: str, at: str, *, prompt: str | None = None, size: str | None = None
    ) -> Decision:
        """A decision from a form, checked as the edit operator would check a re-edit's inputs.

        :raises BetterTokenInputError: naming the field and the fix, before anything is written or paid.
        """
        try:
            chosen = Action(action)
        except ValueError as err:
            allowed = ", ".join(a.value for a in Action)
            raise BetterTokenInputError(f"decision {action!r} is not one of {allowed}") from err
        if chosen is not Action.REEDIT:
            return cls(chosen, by, at)
        if not (prompt or "").strip():
            raise BetterTokenInputError("a re-edit needs a revised prompt: write it in the row's prompt box")
        check_prompt(prompt)
        if size not in (None, "", *SIZES):
            raise BetterTokenInputError(f"re-edit size {size!r} is not one of {', '.join(SIZES)}")
        return cls(chosen, by, at, prompt.strip(), size or None)


@dataclass(frozen=True)
class ReviewItem:
    """One staged image: its round, its state, the sources and prompt it was made from, its history.

    :param reedit_of: the key of the image this one re-edits (round 2 and later).
    :param published_uri: where it was published.
    :param next_key: for a re-edited image, the key of its re-edit.
    """

    key: str
    round: int
    state: ItemState
    sources: tuple[str, ...] = ()
    prompt: str | None = None
    size: str | None = None
    task: str = ""
    reedit_of: str | None = None
    published_uri: str | None = None
    next_key: str | None = None
    history: tuple[Decision, ...] = ()

    @property
    def latest(self) -> Decision | None:
        """The latest decision of its own round, the one that counts when the round closes."""
        own = [decision for decision in self.history if decision.round == self.round]
        return own[-1] if own else None

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "state": self.state.value,
            "sources": list(self.sources),
            "prompt": self.prompt,
            "size": self.size,
            "task": self.task,
            "reedit_of": self.reedit_of,
            "published_uri": self.published_uri,
            "next_key": self.next_key,
            "history": [decision.to_json() for decision in self.history],
        }

    @classmethod
    def from_json(cls, key: str, data: Mapping[str, Any]) -> ReviewItem:
        return cls(
            key=key,
            round=int(data["round"]),
            state=ItemState(data["state"]),
            sources=tuple(data.get("sources") or ()),
            prompt=data.get("prompt"),
            size=data.get("size"),
            task=data.get("task") or "",
            reedit_of=data.get("reedit_of"),
            published_uri=data.get("published_uri"),
            next_key=data.get("next_key"),
            history=tuple(Decision.from_json(d) for d in data.get("history") or ()),
        )


@dataclass(frozen=True)
class RoundClose:
    """How one round of the gate ended: who answered the gate (None when it timed out), and when."""

    round: int
    by: str | None
    at: str
    chosen: str
    timed_out: bool
    undecided: str
    counts: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "by": self.by,
            "at": self.at,
            "chosen": self.chosen,
            "timed_out": self.timed_out,
            "undecided": self.undecided,
            "counts": dict(self.counts),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundClose:
        return cls(
            int(data["round"]),
            data.get("by"),
            str(data["at"]),
            str(data.get("chosen", "")),
            bool(data.get("timed_out")),
            str(data.get("undecided", "reject")),
            dict(data.get("counts") or {}),
        )


def reedit_key(key: str, round_number: int) -> str:
    """Where the re-edit of ``key`` for round ``round_number`` is staged: ``x.png`` -> ``x.r2.png``."""
    stem = key[: -len(".png")] if key.endswith(".png") else key
    if round_number > 2 and stem.endswith(f".r{round_number - 1}"):
        stem = stem.rsplit(".", 1)[0]
    return f"{stem}.r{round_number}.png"


@dataclass(frozen=True)
class ReviewRecord:
    """A run's review: its staged images by key, and how its rounds closed.

    :param bucket: the bucket the images are staged and published in.
    :param max_rounds: the gate's rounds; an image of the last round cannot be re-edited.
    :param write_args: the ``s3_extra_args`` the gate writes with, so that the gallery's writes of
        this record meet the same bucket policy.
    """

    dag_id: str
    run_id: str
    bucket: str
    staging_prefix: str
    publish_prefix: str
    max_rounds: int = 2
    write_args: Mapping[str, Any] = field(default_factory=dict)
    items: Mapping[str, ReviewItem] = field(default_factory=dict)
    rounds: tuple[RoundClose, ...] = ()
    open_round: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "bucket": self.bucket,
            "staging_prefix": self.staging_prefix,
            "publish_prefix": self.publish_prefix,
            "max_rounds": self.max_rounds,
            "write_args": dict(self.write_args),
            "open_round": self.open_round,
            "items": {key: item.to_json() for key, item in sorted(self.items.items())},
            "rounds": [close.to_json() for close in self.rounds],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReviewRecord:
        return cls(
            dag_id=data["dag_id"],
            run_id=data["run_id"],
            bucket=data["bucket"],
            staging_prefix=data["staging_prefix"],
            publish_prefix=data["publish_prefix"],
            max_rounds=int(data.get("max_rounds", 2)),
            write_args=dict(data.get("write_args") or {}),
            items={key: ReviewItem.from_json(key, item) for key, item in (data.get("items") or {}).items()},
            rounds=tuple(RoundClose.from_json(r) for r in data.get("rounds") or ()),
            open_round=data.get("open_round"),
        )

    # -- the three moves -------------------------------------------------------------------------

    def open(self, round_number: int, staged: Iterable[ReviewItem], at: str) -> ReviewRecord:
        """Open a round: these staged images become pending (a re-edit keeps its link to its original).

        A re-edit of this round that left no staged image (its edit failed) is rejected, saying so.
        Opening the same round again (a retried gate task) keeps the decisions already made.
        """
        items = dict(self.items)
        found = set()
        for item in staged:
            found.add(item.key)
            known = items.get(item.key)
            if known is not None and known.round == round_number:
                items[item.key] = replace(known, sources=item.sources or known.sources, task=item.task)
                continue
            items[item.key] = replace(item, round=round_number, state=ItemState.PENDING)
        for key, item in self.items.items():
            if item.round == round_number and item.state is ItemState.PENDING and key not in found:
                gone = Decision(Action.REJECT, "the gate: the re-edit left no image", at, round=round_number)
                items[key] = replace(item, state=ItemState.REJECTED, history=(*item.history, gone))
        return replace(self, items=items, open_round=round_number)

    def decide(self, decisions: Mapping[str, Decision]) -> tuple[ReviewRecord, dict[str, str]]:
        """Add decisions on pending images, by key; the others are refused, each with a reason.

        :returns: the new record, and the refused keys with why.
        """
        items, refused = dict(self.items), {}
        for key, decision in decisions.items():
            item = items.get(key)
            if item is None or item.state is not ItemState.PENDING:
                refused[key] = "it is not waiting for review" if item is None else f"it is {item.state.value}"
                continue
            if decision.action is Action.REEDIT and item.round >= self.max_rounds:
                refused[key] = f"round {item.round} is the last ({self.max_rounds}): approve or reject it"
                continue
            items[key] = replace(item, history=(*item.history, replace(decision, round=item.round)))
        return replace(self, items=items), refused

    def close(self, round_number: int, close: RoundClose) -> ReviewRecord:
        """Close a round: each pending image of it takes its latest decision, or ``close.undecided``.

        Re-edited images get their next round's image, pending once that round opens. Closing a round
        that is closed already changes nothing (a retried gate task).
        """
        if any(done.round == round_number for done in self.rounds):
            return self
        items = dict(self.items)
        counts = {"approved": 0, "rejected": 0, "reedited": 0, "undecided": 0}
        for key, item in self.items.items():
            if item.round != round_number or item.state is not ItemState.PENDING:
                continue
            latest = item.latest
            if latest is None:
                counts["undecided"] += 1
                by = close.by or "the timeout's default"
                latest = Decision(Action(close.undecided), by, close.at, round=round_number)
                item = replace(item, history=(*item.history, latest))
            if latest.action is Action.APPROVE:
                items[key] = replace(item, state=ItemState.APPROVED)
                counts["approved"] += 1
            elif latest.action is Action.REJECT:
                items[key] = replace(item, state=ItemState.REJECTED)
                counts["rejected"] += 1
            else:
                next_key = reedit_key(key, round_number + 1)
                items[key] = replace(item, state=ItemState.REEDITED, next_key=next_key)
                items[next_key] = ReviewItem(
                    key=next_key,
                    round=round_number + 1,
                    state=ItemState.PENDING,
                    sources=item.sources,
                    prompt=latest.prompt,
                    size=latest.size or item.size,
                    reedit_of=key,
                )
                counts["reedited"] += 1
        closed = replace(close, round=round_number, counts=counts)
        return replace(self, items=items, rounds=(*self.rounds, closed), open_round=None)

    def published(self, uris: Mapping[str, str]) -> ReviewRecord:
        """Mark approved images as published, by key, with where they went."""
        items = dict(self.items)
        for key, uri in uris.items():
            if key in items:
                items[key] = replace(items[key], state=ItemState.PUBLISHED, published_uri=uri)
        return replace(self, items=items)

    # -- reading it ------------------------------------------------------------------------------

    def reedits(self, round_number: int) -> list[ReviewItem]:
        """The images of round ``round_number`` that are re-edits, to be made (pending, not staged yet)."""
        return [i for i in self.items.values() if i.round == round_number and i.reedit_of is not None]

    def approved(self) -> list[ReviewItem]:
        return [i for i in self.items.values() if i.state is ItemState.APPROVED]

    def counts(self) -> dict[str, int]:
        """For the manifest: images approved (published or not yet), rejected, re-edited, published."""
        states = [item.state for item in self.items.values()]
        published = states.count(ItemState.PUBLISHED)
        return {
            "images": len(states),
            "approved": published + states.count(ItemState.APPROVED),
            "published": published,
            "rejected": states.count(ItemState.REJECTED),
            "reedited": states.count(ItemState.REEDITED),
            "pending": states.count(ItemState.PENDING),
            "rounds": len(self.rounds),
        }
