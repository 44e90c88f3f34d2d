"""Planning edits from two listings: the images under a source prefix, and the outputs that exist."""

from __future__ import annotations

import posixpath
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.storage.locations import S3Location, check_output_key

__all__ = ["IMAGE_SUFFIXES", "Plan", "plan_edits", "plan_pending"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


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


@dataclass(frozen=True)
class Plan:
    """The edits one run makes, and where the whole image set stands.

    ``images``: the sources found; ``done``: those whose output exists; ``pending``: the rest;
    ``planned``: what this run makes; ``remaining``: what is left for later runs.
    """

    edits: list[dict[str, str]]
    images: int
    done: int
    pending: int
    remaining: int

    @property
    def counts(self) -> dict[str, int]:
        counts = asdict(self)
        del counts["edits"]
        return {**counts, "planned": len(self.edits)}


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

    The rule that two sources must not share an output holds across the whole listing.
    """
    edits = plan_edits(source_keys, source, dest)
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
    )
