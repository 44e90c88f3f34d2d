"""Planning one run's chunk of a catalog, at a cost that grows with the chunk, not with the catalog.

The first run of a chain lists the catalog whole, once, to count it. Every later run plans the
keys an earlier run asked to retry, then lists sources after the chain's watermark a page at a
time until its chunk is full, and lists outputs only across the keys it plans. See
``storage/chain.py`` for the record this reads and extends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow_bettertoken.storage.chain import ChainState, Window, chain_root
from airflow_bettertoken.storage.findings import SkippedKey
from airflow_bettertoken.storage.listing import Plan, plan_edits, plan_pending, usable_sources
from airflow_bettertoken.storage.locations import S3Location

if TYPE_CHECKING:
    from airflow_bettertoken.storage.objects import ImageStore

__all__ = ["Chunk", "plan_chunk"]


@dataclass(frozen=True)
class Chunk:
    """One run's plan, and the chain's record with this run's window in it."""

    plan: Plan
    state: ChainState


def plan_chunk(
    store: ImageStore,
    source: S3Location,
    dest: S3Location,
    *,
    dag_id: str,
    run_id: str,
    chain: ChainState | None,
    max_edits: int,
    replan_failed: bool = False,
) -> Chunk:
    """The next ``max_edits`` pending edits of the chain that ``run_id`` belongs to.

    :param chain: the chain's record as its earlier runs left it; None for a chain's first run.
    :param replan_failed: plan again the edits that failed for good (a forced retry).
    """
    if chain is None or (chain.source_uri, chain.dest_uri) != (source.uri, dest.uri):
        return _first_run(store, source, dest, dag_id, run_id, max_edits)
    skip = set() if replan_failed else set(chain.failed_for_good)
    window = chain.window(run_id)
    if window is None:  # a new run of the chain: it takes the keys after the watermark
        again_first = (*chain.failed_may_retry, *(chain.failed_for_good if replan_failed else ()))
        retried = tuple(key for key in again_first if key not in skip)[:max_edits]
        window = Window(run_id, after=chain.watermark, through=chain.watermark, retried=retried)
        until = None
    else:  # the run again, cleared: its own keys, where they still need an edit
        until = window.through
    again = plan_edits([key for key in window.retried if key not in skip], source, dest)
    found = _scan(store, source, dest, window.after, until, max_edits - len(again), skip)
    edits = [*again, *found.edits]
    if until is None:
        window = dataclasses.replace(window, through=max(found.through, window.after))
    state = chain.with_window(window)
    pending = state.pending + (len(state.failed_for_good) if replan_failed else 0)
    plan = Plan(
        edits=edits,
        images=state.images,
        done=state.done,
        pending=pending,
        remaining=max(0, pending - len(edits)),
        skipped=found.skipped,
        failed_for_good=0 if replan_failed else len(state.failed_for_good),
    )
    return Chunk(plan, state)


def _first_run(
    store: ImageStore, source: S3Location, dest: S3Location, dag_id: str, run_id: str, max_edits: int
) -> Chunk:
    plan = plan_pending(
        store.list_keys(source), store.list_keys(dest), source, dest, only_pending=True, max_edits=max_edits
    )
    through = _source_key(plan.edits[-1], source) if plan.edits else ""
    state = ChainState(
        dag_id=dag_id,
        root_run_id=chain_root(run_id),
        source_uri=source.uri,
        dest_uri=dest.uri,
        images=plan.images,
        done_at_start=plan.done,
        windows=(Window(run_id, after="", through=through),),
    )
    return Chunk(plan, state)


@dataclass(frozen=True)
class _Found:
    edits: list[dict[str, str]]
    skipped: list[SkippedKey]
    through: str


def _scan(
    store: ImageStore,
    source: S3Location,
    dest: S3Location,
    after: str,
    until: str | None,
    need: int,
    skip: Collection[str],
) -> _Found:
    """Pending edits among the source keys after ``after`` (through ``until``), at most ``need``.

    ``through`` is the last key looked at such that every key up to it is planned or settled.
    """
    edits: list[dict[str, str]] = []
    skipped: list[SkippedKey] = []
    through = after
    if need <= 0:
        return _Found(edits, skipped, through)
    for page in store.list_pages(source, start_after=after):
        keys = [key for key in page if until is None or key <= until]
        usable, page_skipped = usable_sources(keys, source)
        skipped += page_skipped
        candidates = [e for e in plan_edits(usable, source, dest) if _source_key(e, source) not in skip]
        existing = _outputs_among(store, dest, candidates)
        for edit in candidates:
            if _dest_key(edit, dest) not in existing:
                edits.append(edit)
            through = _source_key(edit, source)
            if len(edits) == need:  # full: the next page is not even asked for
                return _Found(edits, skipped, through)
        if keys:
            through = max(through, keys[-1])  # every key of the page is settled or planned
        if until is not None and page and page[-1] >= until:
            break
    return _Found(edits, skipped, through)


def _outputs_among(store: ImageStore, dest: S3Location, edits: list[dict[str, str]]) -> set[str]:
    """The output keys that exist across the range of these edits' outputs: a LIST page or two."""
    if not edits:
        return set()
    keys = sorted(_dest_key(edit, dest) for edit in edits)
    low, high = keys[0], keys[-1]
    # Output keys end in ".png": the key with its last letter lowered sorts just before it.
    before_low = low[:-1] + chr(ord(low[-1]) - 1)
    found: set[str] = set()
    for page in store.list_pages(dest, start_after=before_low):
        for key in page:
            if key > high:
                return found
            found.add(key)
    return found


def _source_key(edit: dict[str, str], source: S3Location) -> str:
    return edit["source"][len(f"s3://{source.bucket}/") :]


def _dest_key(edit: dict[str, str], dest: S3Location) -> str:
    return edit["dest"][len(f"s3://{dest.bucket}/") :]
