"""Planning edits from two listings: the images under a source prefix, and the outputs that exist."""

from __future__ import annotations

import difflib
import posixpath
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.protocol.record import Record, record
from airflow_bettertoken.storage.findings import SkippedKey
from airflow_bettertoken.storage.locations import RESERVED_PREFIX, S3Location, check_output_key, key_problem

if TYPE_CHECKING:
    from airflow_bettertoken.storage.objects import ImageStore
    from airflow_bettertoken.storage.s3_io import S3IO

__all__ = [
    "IMAGE_SUFFIXES",
    "ListingCounts",
    "Plan",
    "empty_source_error",
    "nearby_prefixes",
    "plan_edits",
    "plan_every_edit",
    "plan_pending",
    "usable_sources",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
#: The listing's XCom key for its counts (:class:`ListingCounts`).
COUNTS_KEY = "counts"


def usable_sources(keys: Iterable[str], source: S3Location) -> tuple[list[str], list[SkippedKey]]:
    """The image keys that can be planned, and those skipped with a reason, both in key order.

    A key whose path under ``source`` has an empty (``//``), ``.`` or ``..`` segment or a control
    character has no safe output path: it is skipped and reported, and the listing goes on. Keys
    under ``_bettertoken/`` are the provider's own records: they are dropped without a word.
    """
    usable: list[str] = []
    skipped: list[SkippedKey] = []
    for key in sorted(keys):
        if key.startswith(RESERVED_PREFIX) or not key.lower().endswith(IMAGE_SUFFIXES):
            continue
        problem = key_problem(key[len(source.key) :])
        if problem:
            skipped.append(SkippedKey(key, f"its path has {problem}, so it has no safe output key"))
        else:
            usable.append(key)
    return usable, skipped


def plan_edits(keys: Iterable[str], source: S3Location, dest: S3Location) -> list[dict[str, str]]:
    """Pair each image key under ``source`` with its output under ``dest``, keeping the relative path.

    ``in/a/x.jpg`` becomes ``out/a/x.png``, labelled ``a/x.jpg``; the edits come in key order. Two
    sources that would share an output (``a/x.jpg`` and ``a/x.png``) are refused, naming both.
    """
    edits: dict[str, dict[str, str]] = {}
    source_uri, dest_uri = f"s3://{source.bucket}/", f"s3://{dest.bucket}/"
    for key in sorted(keys):
        if not key.lower().endswith(IMAGE_SUFFIXES):
            continue
        relative = key[len(source.key) :]
        output_key = dest.key + posixpath.splitext(relative)[0] + ".png"
        check_output_key(output_key)
        edit = {"source": source_uri + key, "dest": dest_uri + output_key, "image_label": relative}
        if output_key in edits:
            raise BetterTokenInputError(
                f"{edits[output_key]['source']} and {edit['source']} would both be written "
                f"to {edit['dest']}; rename one of them"
            )
        edits[output_key] = edit
    return list(edits.values())


@record
class ListingCounts(Record):
    """Where the image set stands, as the listing pushes it (XCom ``counts``); see :class:`Plan`."""

    images: int
    done: int
    pending: int
    remaining: int
    planned: int
    failed_for_good: int = 0


@dataclass(frozen=True)
class Plan:
    """The edits one run makes, and where the whole image set stands.

    ``images``: the sources found; ``done``: those whose output exists; ``pending``: the rest;
    ``planned``: what this run makes; ``remaining``: what is left for later runs; ``failed_for_good``:
    edits that failed for good in an earlier run of the chain, not planned again (nor counted in
    ``pending``). ``skipped``: keys that could not be planned (not counted as images), with reasons.
    """

    edits: list[dict[str, str]]
    images: int
    done: int
    pending: int
    remaining: int
    skipped: list[SkippedKey] = field(default_factory=list)
    failed_for_good: int = 0

    @property
    def counts(self) -> ListingCounts:
        return ListingCounts(
            images=self.images,
            done=self.done,
            pending=self.pending,
            remaining=self.remaining,
            planned=len(self.edits),
            failed_for_good=self.failed_for_good,
        )


def plan_pending(
    source_keys: Iterable[str],
    output_keys: Collection[str],
    source: S3Location,
    dest: S3Location,
    *,
    only_pending: bool,
    max_edits: int,
) -> Plan:
    """The first ``max_edits`` edits in key order, skipping those whose output exists if ``only_pending``.

    The rule that two sources must not share an output holds across the whole listing; keys without a
    safe output path are skipped (see :func:`usable_sources`).
    """
    usable, skipped = usable_sources(source_keys, source)
    edits = plan_edits(usable, source, dest)
    existing = set(output_keys)
    skip = len(f"s3://{dest.bucket}/")
    pending = [edit for edit in edits if edit["dest"][skip:] not in existing]
    planned = (pending if only_pending else edits)[:max_edits]
    # What stays pending after this run: with only_pending=False, planned edits may be done ones.
    planned_pending = len(planned) if only_pending else sum(e["dest"][skip:] not in existing for e in planned)
    return Plan(
        edits=planned,
        images=len(edits),
        done=len(edits) - len(pending),
        pending=len(pending),
        remaining=len(pending) - planned_pending,
        skipped=skipped,
    )


def plan_every_edit(store: ImageStore, source: S3Location, dest: S3Location, *, max_edits: int) -> Plan:
    """The first ``max_edits`` edits of every image under ``source``, made or not (a forced re-edit).

    One listing of the sources; the outputs are not listed, since none is skipped.
    """
    return plan_pending(store.list_keys(source), [], source, dest, only_pending=False, max_edits=max_edits)


#: Prefixes named in the error for a source with no image: the nearest ones by spelling.
NEARBY_SHOWN = 5


def nearby_prefixes(io: S3IO, source: S3Location) -> list[str] | None:
    """The prefixes one level above ``source`` (one LIST with a delimiter), nearest by spelling first.

    None when that LIST fails: the hint is a courtesy, the error it adds to is the point.
    """
    parent = posixpath.dirname(source.key.rstrip("/"))
    parent = parent + "/" if parent else ""
    try:
        answer: dict[str, Any] = io.client.list_objects_v2(
            Bucket=source.bucket, Prefix=parent, Delimiter="/", MaxKeys=1000, **io.extra_args.for_read()
        )
    except (ClientError, BotoCoreError):  # a denied or failed LIST only leaves the hint out
        return None
    found = [
        p["Prefix"] for p in answer.get("CommonPrefixes", []) if not p["Prefix"].startswith(RESERVED_PREFIX)
    ]
    near = difflib.get_close_matches(source.key, found, n=NEARBY_SHOWN, cutoff=0)
    return [f"s3://{source.bucket}/{prefix}" for prefix in near]


def empty_source_error(
    source: S3Location, what: str, nearby: list[str] | None, skipped: int = 0
) -> BetterTokenInputError:
    """The error for a source prefix with no image to edit: it names the prefix, what is near, the fix.

    :param nearby: from :func:`nearby_prefixes`; the source itself among them means it holds objects.
    :param skipped: image keys skipped for an unsafe path.
    """
    if skipped:
        found = f"{skipped} image keys there have no safe output path (see the log)"
    elif nearby is not None and source.uri in nearby:
        found = "it holds objects, but none ending " + ", ".join(IMAGE_SUFFIXES)
    else:
        found = "no object has a key that starts with it"
    others = [uri for uri in nearby or [] if uri != source.uri]
    near = f"; prefixes next to it: {', '.join(others)}" if others else ""
    return BetterTokenInputError(
        f"{what} {source.uri} holds no image to edit: {found}{near}. Correct {what}, or pass "
        "allow_empty=True to the listing where an empty batch is normal"
    )
