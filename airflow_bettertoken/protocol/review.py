"""The review gate's record and its decisions: pure functions of one typed document, tested by table.

One record per DAG run (``storage/review.py`` keeps it in S3 with conditional writes). It holds each
staged image (by its key), the decisions reviewers made on it, and how each round of the gate ended:

- a round **opens** when the gate task starts waiting: the images of that round become ``pending``;
- reviewers **decide** on pending images (approve, reject, re-edit with a revised prompt and size):
  the latest decision counts, and every one is kept in the image's history with who and when;
- the round **closes** when the gate's human-in-the-loop task is answered (or times out): every
  pending image takes its latest decision, or the DAG author's default when it has none. Approved
  images are then published, re-edits become new images of the next round, rejected ones stay staged.

Each image carries its ``round`` and its ``name``: its path under the publish prefix, which a re-edit
takes from its original. Neither is ever read back from a file name, so a source named ``x.r2.png``
is published as ``x.r2.png``, and a re-edit is staged under its own round's prefix, where no other
image's key can be.

Every function here returns a new record and may run again on a fresher one (a lost conditional
write), so two reviewers who submit at once both keep their decisions.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from airflow_bettertoken.exceptions import BetterTokenInputError, BetterTokenRecordError
from airflow_bettertoken.protocol.wire import SIZES, check_prompt

__all__ = [
    "FORMAT",
    "UNDECIDED_CHOICES",
    "Action",
    "Decision",
    "ItemState",
    "ReviewItem",
    "ReviewRecord",
    "RoundClose",
]

#: The record's format. 1 (the first release candidates) had no ``name``: it is derived on load.
FORMAT = 2


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


class _Part(BaseModel):
    """A part of the record: immutable, and refusing fields it does not know (a typo, a newer format)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Decision(_Part):
    """One reviewer's decision on one image, as the record keeps it.

    :param round: the round of the image it was made on.
    :param prompt: a re-edit's revised prompt.
    :param size: a re-edit's size; None keeps the image's own.
    """

    action: Action
    by: str
    at: str
    prompt: str | None = None
    size: str | None = None
    round: int = Field(default=1, ge=1)

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
            return cls(action=chosen, by=by, at=at)
        if not (prompt or "").strip():
            raise BetterTokenInputError("a re-edit needs a revised prompt: write it in the row's prompt box")
        check_prompt(prompt)
        if size not in (None, "", *SIZES):
            raise BetterTokenInputError(f"re-edit size {size!r} is not one of {', '.join(SIZES)}")
        return cls(action=chosen, by=by, at=at, prompt=prompt.strip(), size=size or None)


def _name_problem(name: str) -> str | None:
    segments = name.split("/")
    if not name or name.endswith("/") or any(s in ("", ".", "..") for s in segments):
        return "it must be a relative path with no empty, '.' or '..' segment"
    return None


class ReviewItem(_Part):
    """One staged image: its round, its state, the sources and prompt it was made from, its history.

    :param key: where it is staged, in the record's bucket (the record keeps it as the item's name in
        ``items``, not inside the item).
    :param name: its path under the publish prefix, where it goes once approved: its source's path
        under the listed prefix, and for a re-edit its original's name.
    :param round: the round it is reviewed in: 1 for the edits, 2 for their re-edits, and so on.
    :param reedit_of: the key of the image this one re-edits (round 2 and later).
    :param published_uri: where it was published.
    :param next_key: for a re-edited image, the key of its re-edit.
    """

    key: str = Field(exclude=True)
    name: str
    round: int = Field(ge=0)
    state: ItemState
    sources: tuple[str, ...] = ()
    prompt: str | None = None
    size: str | None = None
    task: str = ""
    reedit_of: str | None = None
    published_uri: str | None = None
    next_key: str | None = None
    history: tuple[Decision, ...] = ()

    @field_validator("name")
    @classmethod
    def _relative_name(cls, name: str) -> str:
        problem = _name_problem(name)
        if problem:
            raise ValueError(f"name {name!r} cannot be published: {problem}")
        return name

    @property
    def latest(self) -> Decision | None:
        """The latest decision of its own round, the one that counts when the round closes."""
        own = [decision for decision in self.history if decision.round == self.round]
        return own[-1] if own else None


class RoundClose(_Part):
    """How one round of the gate ended: who answered the gate (None when it timed out), and when.

    :param chosen: the option the gate was answered with.
    :param undecided: what an image nobody decided on got: ``reject`` or ``approve``.
    :param counts: how many images were approved, rejected, re-edited, and left undecided.
    """

    round: int = Field(ge=1)
    by: str | None
    at: str
    chosen: str
    timed_out: bool
    undecided: Literal["reject", "approve"]
    counts: dict[str, int] = Field(default_factory=dict)


def _without_prefix(key: str, prefix: str, what: str) -> str:
    if not key.startswith(prefix):
        raise ValueError(f"{what} {key!r} is not under the staging prefix {prefix!r}")
    return key[len(prefix) :]


def _from_format_1(data: dict[str, Any]) -> dict[str, Any]:
    """A format 1 record, as format 2 reads it.

    Format 1 kept each image's round already (``round``, and ``reedit_of`` for a re-edit), so rounds
    mean what they meant; what it lacked is the name to publish under, which it guessed back from the
    key (``x.r2.png`` -> ``x.png``). Here an edit's name is its key under the staging prefix, and a
    re-edit's is its original's, followed through ``reedit_of``: never read from the file name.
    """
    staging = str(data.get("staging_prefix", "")).removeprefix("s3://").partition("/")[2]
    items: dict[str, Any] = dict(data.get("items") or {})

    def name_of(key: str, seen: tuple[str, ...] = ()) -> str:
        original = (items.get(key) or {}).get("reedit_of")
        if original is None:
            return _without_prefix(key, staging, "image")
        if original in seen or original not in items:
            raise ValueError(f"re-edit {key!r} names an original that is not in the record: {original!r}")
        return name_of(original, (*seen, key))

    migrated = {key: {"name": name_of(key), **item} for key, item in items.items()}
    return {**data, "format": FORMAT, "items": migrated}


class ReviewRecord(_Part):
    """A run's review: its staged images by key, and how its rounds closed.

    :param format: the record's format; format 1 records are read too (see :func:`_from_format_1`).
    :param bucket: the bucket the images are staged and published in.
    :param staging_prefix: ``s3://`` prefix where round 1's edits were staged.
    :param max_rounds: the gate's rounds; an image of the last round cannot be re-edited.
    :param write_args: the ``s3_extra_args`` the gate writes with, so that the gallery's writes of
        this record meet the same bucket policy.
    :param open_round: the round waiting for its answer, if any.
    """

    format: Literal[2] = FORMAT
    dag_id: str
    run_id: str
    bucket: str
    staging_prefix: str
    publish_prefix: str
    max_rounds: int = Field(default=2, ge=1)
    write_args: dict[str, Any] = Field(default_factory=dict)
    items: dict[str, ReviewItem] = Field(default_factory=dict)
    rounds: tuple[RoundClose, ...] = ()
    open_round: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _keys_into_items(cls, data: Any) -> Any:
        """Each item's key is its name in ``items``; a format 1 record is read as format 2."""
        if not isinstance(data, dict) or not isinstance(data.get("items"), dict):
            return data
        if data.get("format") == 1:
            data = _from_format_1(data)
        items = data["items"].items()
        return {**data, "items": {k: {**v, "key": k} if isinstance(v, dict) else v for k, v in items}}

    @classmethod
    def load(cls, data: Any, where: str) -> ReviewRecord:
        """The record from its JSON document, checked.

        :param where: the object it was read from, for the error.
        :raises BetterTokenRecordError: naming ``where`` and each field that is wrong.
        """
        found = data.get("format") if isinstance(data, dict) else None
        if isinstance(found, int) and found > FORMAT:
            raise BetterTokenRecordError(
                f"the review record {where} has format {found}, written by a newer airflow-bettertoken "
                f"(this one reads up to {FORMAT}): upgrade the provider where this DAG runs"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'the document'}: {e['msg']}" for e in err.errors()
            )
            raise BetterTokenRecordError(
                f"the review record {where} is not one airflow-bettertoken can read: {problems}"
            ) from err

    def dump(self) -> dict[str, Any]:
        """The JSON document, items in key order."""
        data = self.model_dump(mode="json")
        data["items"] = dict(sorted(data["items"].items()))
        return data

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
                items[item.key] = known.model_copy(
                    update={"sources": item.sources or known.sources, "task": item.task}
                )
                continue
            items[item.key] = item.model_copy(update={"round": round_number, "state": ItemState.PENDING})
        for key, item in self.items.items():
            if (
                item.reedit_of
                and item.round == round_number
                and item.state is ItemState.PENDING
                and key not in found
            ):
                gone = Decision(
                    action=Action.REJECT, by="the gate: the re-edit left no image", at=at, round=round_number
                )
                items[key] = item.model_copy(
                    update={"state": ItemState.REJECTED, "history": (*item.history, gone)}
                )
        return self.model_copy(update={"items": items, "open_round": round_number})

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
            mine = decision.model_copy(update={"round": item.round})
            items[key] = item.model_copy(update={"history": (*item.history, mine)})
        return self.model_copy(update={"items": items}), refused

    def close(self, round_number: int, close: RoundClose, reedit_prefix: str) -> ReviewRecord:
        """Close a round: each pending image of it takes its latest decision, or ``close.undecided``.

        A re-edited image gets its next round's image, staged at ``reedit_prefix`` + its name and
        pending once that round opens. Closing a round that is closed already changes nothing (a
        retried gate task).

        :param reedit_prefix: the key prefix of the next round's staged images, which no image of
            another round is under (``storage.review.staging_prefix``).
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
                latest = Decision(action=Action(close.undecided), by=by, at=close.at, round=round_number)
                item = item.model_copy(update={"history": (*item.history, latest)})
            if latest.action is Action.APPROVE:
                items[key] = item.model_copy(update={"state": ItemState.APPROVED})
                counts["approved"] += 1
            elif latest.action is Action.REJECT:
                items[key] = item.model_copy(update={"state": ItemState.REJECTED})
                counts["rejected"] += 1
            else:
                next_key = reedit_prefix + item.name
                items[key] = item.model_copy(update={"state": ItemState.REEDITED, "next_key": next_key})
                items[next_key] = ReviewItem(
                    key=next_key,
                    name=item.name,
                    round=round_number + 1,
                    state=ItemState.PENDING,
                    sources=item.sources,
                    prompt=latest.prompt,
                    size=latest.size or item.size,
                    reedit_of=key,
                )
                counts["reedited"] += 1
        closed = close.model_copy(update={"round": round_number, "counts": counts})
        return self.model_copy(update={"items": items, "rounds": (*self.rounds, closed), "open_round": None})

    def published(self, uris: Mapping[str, str]) -> ReviewRecord:
        """Mark approved images as published, by key, with where they went."""
        items = dict(self.items)
        for key, uri in uris.items():
            if key in items:
                items[key] = items[key].model_copy(
                    update={"state": ItemState.PUBLISHED, "published_uri": uri}
                )
        return self.model_copy(update={"items": items})

    # -- reading it ------------------------------------------------------------------------------

    def of_round(self, round_number: int) -> list[ReviewItem]:
        """The images reviewed in round ``round_number``."""
        return [i for i in self.items.values() if i.round == round_number]

    def reedits(self, round_number: int) -> list[ReviewItem]:
        """The images of round ``round_number`` that are re-edits, to be made (pending, not staged yet)."""
        return [i for i in self.of_round(round_number) if i.reedit_of is not None]

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
