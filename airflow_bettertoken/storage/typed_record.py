"""A record class's JSON object in S3, read and changed as typed records, never as raw JSON.

:class:`~airflow_bettertoken.storage.records.ConditionalRecord` reads and writes the JSON with its
ETag; this loads each version with the record class (so a record that fails to load is an error
naming its S3 URI) and dumps what the change returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from airflow_bettertoken.protocol.record import Record

if TYPE_CHECKING:
    from airflow_bettertoken.storage.locations import S3Location
    from airflow_bettertoken.storage.records import ConditionalRecord

__all__ = ["TypedRecord"]

R = TypeVar("R", bound=Record)


class TypedRecord(Generic[R]):
    """One record of class ``record_class`` in S3, kept by ``conditional``."""

    def __init__(self, record_class: type[R], conditional: ConditionalRecord) -> None:
        self.record_class = record_class
        self.conditional = conditional

    @property
    def location(self) -> S3Location:
        return self.conditional.location

    def read(self) -> R | None:
        """The record as S3 has it now; None when there is none.

        :raises BetterTokenRecordError: when the object is there but holds no such record.
        """
        return self._load(self.conditional.read())

    def update(self, change: Callable[[R | None], R | None]) -> R | None:
        """Apply ``change`` (pure: it may run again on a fresher record) and write what it returns;
        None writes nothing. Returns the record as written, or as read when nothing was written."""

        outcome: list[R | None] = []

        def on_document(document: dict[str, Any] | None) -> dict[str, Any] | None:
            current = self._load(document)
            changed = change(current)
            outcome[:] = [current if changed is None else changed]
            return None if changed is None else changed.dump()

        self.conditional.update(on_document)
        return outcome[0]

    def _load(self, document: dict[str, Any] | None) -> R | None:
        return None if document is None else self.record_class.load(document, self.location.uri)
