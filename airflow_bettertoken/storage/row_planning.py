"""Planning a run's edits from a table's rows: pending only, in chunks, bad rows reported, never paid.

:class:`RowPlanner` takes the rows as they stream (from ``storage/tables.py``, or a task's XCom) and
yields one :class:`~airflow_bettertoken.storage.table_plan.PlanRow` per row for the plan file, while it
keeps the edits of this run's chunk. Rows are settled a batch at a time: the outputs of a batch are
looked up together (the caller's ``outputs_found``: a set from one LIST, HEADs for the odd output
elsewhere), and, when asked, what made those that exist, to find rows whose prompt changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.protocol.result import names_sources
from airflow_bettertoken.protocol.rows import BadRow, PlannedRow, RowSpec, Seen, plan_row
from airflow_bettertoken.storage.findings import MAX_REPORTED_KEYS
from airflow_bettertoken.storage.locations import S3Location, parse_s3_uri
from airflow_bettertoken.storage.objects import ImageStore
from airflow_bettertoken.storage.table_plan import PlanEntry, PlanRow, RowCounts
from airflow_bettertoken.storage.tables import Unreadable

if TYPE_CHECKING:
    from airflow_bettertoken.storage.s3_io import ObjectRead

__all__ = ["RowPlanner", "outputs_found", "prompts_changed"]

# Rows settled together: one lookup of their outputs (and ledgers) per batch.
_BATCH = 1000
# HEADs in flight when looking at what made the outputs of done rows.
_PARALLEL_HEADS = 8


@dataclass
class RowPlanner:
    """One run's plan of a table.

    :param outputs_found: of these output URIs, those that exist; None plans every good row (a forced
        re-edit), found or not.
    :param prompts_changed: of these rows (whose outputs exist), the keys whose output was made with
        another prompt (or size, or sources); None never replans a row that is done.
    :param failed_for_good: row keys that failed for good in an earlier run of the chain, with why.
    """

    spec: RowSpec
    max_edits: int
    outputs_found: Callable[[list[str]], Collection[str]] | None
    prompts_changed: Callable[[list[PlannedRow]], Collection[str]] | None = None
    failed_for_good: Mapping[str, Any] = field(default_factory=dict)
    edits: list[dict[str, Any]] = field(default_factory=list)
    bad: list[PlanRow] = field(default_factory=list)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("done", "later", "failed", "bad"), 0)
    )

    def plan(self, rows: Iterable[tuple[int, Mapping[str, Any] | Unreadable]]) -> Iterator[PlanEntry]:
        """The plan file's rows, in the table's order; :attr:`edits` and :meth:`row_counts` once done.

        :raises BetterTokenInputError: when a column the spec needs is in no row (after the last).
        """
        seen, batch = Seen(outputs=not self.spec.fast_dest), []
        missing = dict.fromkeys(self.spec.required_columns)
        columns: list[str] = []
        for line, fields in rows:
            if isinstance(fields, Unreadable):
                batch.append(BadRow("", line, fields.reason))
            else:
                if missing:
                    for name in [name for name in missing if name in fields]:
                        del missing[name]
                    columns = columns or list(fields)
                row = plan_row(fields, line, self.spec)
                batch.append(seen.check(row) if isinstance(row, PlannedRow) else row)
            if len(batch) == _BATCH:
                yield from self._settle(batch)
                batch = []
        yield from self._settle(batch)
        if missing and (columns or self.counts["bad"]):
            shown = ", ".join(repr(name) for name in columns[:20]) or "none"
            raise BetterTokenInputError(
                f"column {next(iter(missing))!r} is in no row of the table (columns found: {shown}); "
                "name the right column in the operator's arguments, or add it to the table"
            )

    def row_counts(self) -> RowCounts:
        counts = self.counts
        pending = len(self.edits) + counts["later"]
        return RowCounts(
            images=pending + counts["done"] + counts["failed"],
            done=counts["done"],
            pending=pending,
            remaining=counts["later"],
            planned=len(self.edits),
            failed_for_good=counts["failed"],
            bad=counts["bad"],
        )

    def _settle(self, batch: list[PlannedRow | BadRow]) -> Iterator[PlanEntry]:
        good = [row for row in batch if isinstance(row, PlannedRow) and row.key not in self.failed_for_good]
        found: Collection[str] = ()
        if self.outputs_found is not None and good:
            found = self.outputs_found([row.dest for row in good])
        changed: Collection[str] = ()
        if self.prompts_changed is not None and found:
            changed = self.prompts_changed([row for row in good if row.dest in found])
        for row in batch:
            if isinstance(row, BadRow):
                yield self._bad(row)
            elif row.key in self.failed_for_good:
                self.counts["failed"] += 1
                yield _plan_row(row, "failed for good", _reason(self.failed_for_good[row.key]))
            elif row.dest in found and row.key not in changed:
                self.counts["done"] += 1
                yield _plan_row(row, "done")
            elif len(self.edits) < self.max_edits:
                self.edits.append(_edit(row, replace=row.dest in found))
                yield _plan_row(row, "planned")
            else:
                self.counts["later"] += 1
                yield _plan_row(row, "later")

    def _bad(self, row: BadRow) -> PlanEntry:
        self.counts["bad"] += 1
        entry = PlanEntry(row.key, row.line, "bad", None, None, None, (), row.reason)
        if len(self.bad) < MAX_REPORTED_KEYS:
            self.bad.append(entry.record())
        return entry


def _reason(failure: Any) -> str:
    error, reason = getattr(failure, "error", None), getattr(failure, "reason", None)
    return ": ".join(part for part in (error, reason) if part) or "failed for good in an earlier run"


def _plan_row(row: PlannedRow, state: str, reason: str | None = None) -> PlanEntry:
    # tuple.__new__ as the named tuple's own __new__ does, without its extra Python call per row.
    return _new_tuple(
        PlanEntry, (row.key, row.line, state, row.dest, row.prompt, row.size, row.sources, reason)
    )


_new_tuple = tuple.__new__


def _edit(row: PlannedRow, *, replace: bool) -> dict[str, Any]:
    """The edit's arguments for ``expand_kwargs``; a changed prompt replaces the output it made before."""
    source: str | list[str] = row.sources[0] if len(row.sources) == 1 else list(row.sources)
    edit = {
        "source": source,
        "dest": row.dest,
        "prompt": row.prompt,
        "size": row.size,
        "image_label": row.key,
    }
    if replace:
        edit["if_exists"] = "replace"
    return edit


def outputs_found(store: ImageStore, dest: S3Location) -> Callable[[list[str]], Collection[str]]:
    """Which of a batch's outputs exist: one paginated LIST of ``dest``, made at the first batch, and a
    HEAD for an output elsewhere (a row's own ``dest``)."""
    listed: set[str] | None = None
    root = f"s3://{dest.bucket}/"

    def found(uris: list[str]) -> Collection[str]:
        nonlocal listed
        if listed is None:
            listed = {root + key for key in store.io.list_keys(dest)}
        return {
            uri
            for uri in uris
            if uri in listed
            or (not uri.startswith(dest.uri) and store.io.head(parse_s3_uri(uri, "dest")).found)
        }

    return found


def prompts_changed(store: ImageStore) -> Callable[[list[PlannedRow]], Collection[str]]:
    """Of a batch's done rows, the keys whose output was made with another prompt, size or sources.

    One HEAD per output, a few at a time: the output's S3 metadata says what made it. Its spend ledger
    cannot: a replaced output's edit is named after the task that replaced it as well.
    """

    def changed(rows: list[PlannedRow]) -> Collection[str]:
        io = store.io
        io.client  # noqa: B018 (one client, made before the threads share it)
        with ThreadPoolExecutor(max_workers=_PARALLEL_HEADS) as pool:
            heads = pool.map(lambda row: io.head(parse_s3_uri(row.dest, "dest")), rows)
            return {row.key for row, head in zip(rows, heads, strict=True) if _made_otherwise(row, head)}

    return changed


def _made_otherwise(row: PlannedRow, head: ObjectRead) -> bool:
    """Whether the output's metadata names another prompt, size or sources than the row's; an output
    that names none (not made by an edit) is left as it is."""
    meta = head.metadata
    if not head.found or "prompt-sha256" not in meta:
        return False
    prompt = hashlib.sha256(row.prompt.encode()).hexdigest()
    size = meta.get("requested-size", row.size)
    return meta["prompt-sha256"] != prompt or size != row.size or not names_sources(meta, list(row.sources))
