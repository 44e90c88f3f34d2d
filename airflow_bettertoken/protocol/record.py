"""What every stored or shared record has: a validated load, a dump to plain JSON, a format version.

A record is a frozen pydantic dataclass that also derives from :class:`Record`. Its JSON is what
users' buckets and XCom hold, so it is read strictly: a field of another type, or a missing one,
is a :class:`~airflow_bettertoken.exceptions.BetterTokenRecordError` that names the object and the
field, never a default in its place. Keys a reader does not know are ignored, so that an older
release reads what a newer one added. A field renamed since a release keeps its old name as a
``validation_alias`` (``AliasChoices``), so that records written before still load.

Pure code: no I/O; the caller says where the document came from (an S3 URI, a task's XCom).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from airflow_bettertoken.exceptions import BetterTokenRecordError

__all__ = ["FORMAT_KEY", "Record", "Sums", "record"]

#: The key of a record's format version in its JSON.
FORMAT_KEY = "format"
# Of a record that fails to load, this many of its problems are named.
_MAX_PROBLEMS = 3
R = TypeVar("R", bound="Record")
S = TypeVar("S", bound="Sums")

#: The decorator of every record class: frozen, blind to keys it does not know, and built by field name
#: (a renamed field reads its old name too).
record = dataclass(frozen=True, config=ConfigDict(extra="ignore", populate_by_name=True))


@functools.cache
def _adapter(cls: type) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


class Record:
    """A record's load and dump; subclasses are :data:`record` dataclasses.

    ``FORMAT`` is the version this release writes. A record of a later version is refused with a
    message to upgrade, since this release cannot know what its new fields mean.
    """

    FORMAT: ClassVar[int] = 1

    @classmethod
    def load(cls: type[R], document: object, where: str) -> R:
        """The record from its JSON document (already parsed).

        :param where: the object it was read from, for the error: an S3 URI, or a task's XCom.
        :raises BetterTokenRecordError: when it is no such record, or one of a later format.
        """
        name = cls.__name__
        if not isinstance(document, Mapping):
            raise BetterTokenRecordError(
                f"{where} is no {name} record: it holds {type(document).__name__}, not a JSON object"
            )
        version = document.get(FORMAT_KEY, 1)
        if isinstance(version, bool) or not isinstance(version, int):
            raise BetterTokenRecordError(f"{where} is no {name} record: its format is {version!r}")
        if version > cls.FORMAT:
            raise BetterTokenRecordError(
                f"{where} is a {name} record of format {version}, written by a later release of "
                f"airflow-bettertoken; this one reads up to format {cls.FORMAT}: upgrade it"
            )
        try:
            text = json.dumps(document)
        except (TypeError, ValueError) as err:
            raise BetterTokenRecordError(f"{where} is no {name} record: it is not JSON ({err})") from None
        try:
            # JSON mode, strictly: a list reads as a tuple and text as an enum, but "5" is no number.
            return _adapter(cls).validate_json(text, strict=True)
        except ValidationError as err:
            raise BetterTokenRecordError(f"{where} is not a valid {name} record: {_problems(err)}") from None

    def dump(self) -> dict[str, Any]:
        """The record as plain JSON, with its format version."""
        return {FORMAT_KEY: self.FORMAT, **_adapter(type(self)).dump_python(self, mode="json", by_alias=True)}


class Sums:
    """A record of numbers that add and subtract field by field: a run's spend, review decisions.

    Subclasses are :data:`record` dataclasses whose fields are all ``int`` or ``Decimal`` (money).
    """

    def __add__(self: S, other: S) -> S:
        return self._each(other, operator.add)

    def __sub__(self: S, other: S) -> S:
        return self._each(other, operator.sub)

    def _each(self: S, other: S, how: Callable[[int, int], int]) -> S:
        fields = dataclasses.fields(self)
        return type(self)(**{f.name: how(getattr(self, f.name), getattr(other, f.name)) for f in fields})


def _problems(err: ValidationError) -> str:
    """What is wrong, field by field: ``width: Input should be a valid integer (got True)``."""
    found = []
    for problem in err.errors()[:_MAX_PROBLEMS]:
        field = ".".join(str(part) for part in problem["loc"]) or "the record"
        given = f" (got {problem['input']!r:.80})" if problem["type"] != "missing" else ""
        found.append(f"{field}: {problem['msg']}{given}")
    more = err.error_count() - len(found)
    return "; ".join(found) + (f"; and {more} more" if more > 0 else "")
