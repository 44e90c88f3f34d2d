"""A table's rows as edits: which columns mean what, the prompt template, and the check of each row.

Pure code: a row is a mapping of its fields, read by ``storage/tables.py``; :func:`plan_row` turns it
into a :class:`PlannedRow` or a :class:`BadRow` with the reason, so that a bad row never costs money
and never stops the good ones.

The prompt template is ``string.Template``'s ``${field}``, not Jinja's ``{{ field }}``: Airflow renders
an operator's template fields with Jinja before the task runs, which would fail on a field meant for
each row; ``${field}`` passes through Jinja untouched.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.protocol.paths import key_problem
from airflow_bettertoken.protocol.wire import MAX_IMAGES, MAX_PROMPT_CHARS, SIZES, check_prompt, check_size

__all__ = ["BadRow", "PlannedRow", "RowSpec", "Seen", "plan_row", "template_fields_of"]

# The reserved prefix of the provider's records (storage/locations.py RESERVED_PREFIX): never an output.
_RESERVED = "_bettertoken/"


def template_fields_of(template: str) -> tuple[str, ...]:
    """The fields a prompt template names, in order; an invalid ``$`` is an error naming its place."""
    names: list[str] = []
    for match in string.Template.pattern.finditer(template):
        if match.group("invalid") is not None:
            at = match.start()
            raise BetterTokenInputError(
                f"prompt_template has a '$' at character {at + 1} that names no field "
                f"({template[at : at + 12]!r}); write ${{field}} for a row's field, $$ for a '$'"
            )
        name = match.group("named") or match.group("braced")
        if name and name not in names:
            names.append(name)
    return tuple(names)


@dataclass(frozen=True)
class RowSpec:
    """Which columns of a table make an edit, and the defaults for what a row leaves out.

    :param key_column: the row's id; the output is ``dest_prefix + key + ".png"``.
    :param source_columns: the columns holding source URIs (each one URI, or a list of them); empty
        values in all but the first are left out.
    :param prompt_column: the row's own prompt; when it is empty, the template is rendered.
    :param prompt_template: ``${field}`` placeholders filled from the row's fields.
    :param size_column: the row's size; when it is empty, ``default_size``.
    :param dest_column: the row's output (``s3://bucket/key.png``, or a prefix ending in ``/`` under
        which it is named after the key); when it is empty, under ``dest_prefix``.
    :param dest_prefix: ``s3://bucket/prefix/``, checked by the caller.
    """

    dest_prefix: str
    key_column: str = "key"
    source_columns: tuple[str, ...] = ("source",)
    prompt_column: str | None = None
    prompt_template: str | None = None
    size_column: str | None = None
    default_size: str = "auto"
    dest_column: str | None = None

    def __post_init__(self) -> None:
        if not self.source_columns:
            raise BetterTokenInputError("source_columns names no column; name the column of the source URIs")
        if not self.prompt_column and not self.prompt_template:
            raise BetterTokenInputError(
                "give prompt_column, prompt_template or both, so each row has a prompt"
            )
        if self.prompt_template:
            template_fields_of(self.prompt_template)
        check_size(self.default_size)

    @cached_property
    def template_format(self) -> tuple[str, tuple[str, ...]]:
        """The template as a ``str.format`` pattern and the fields it takes in order, parsed once:
        rendering a row is one ``format`` call, not a regex."""
        template = self.prompt_template or ""
        pattern: list[str] = []
        names: list[str] = []
        at = 0
        for match in string.Template.pattern.finditer(template):
            pattern.append(template[at : match.start()].replace("{", "{{").replace("}", "}}"))
            name = match.group("named") or match.group("braced")
            if name:
                pattern.append(f"{{{len(names)}}}")
                names.append(name)
            else:  # $$
                pattern.append("$")
            at = match.end()
        pattern.append(template[at:].replace("{", "{{").replace("}", "}}"))
        return "".join(pattern), tuple(names)

    @cached_property
    def quick_plan(self) -> Callable[[Mapping[str, object], int], PlannedRow | None]:
        return _quick_planner(self)

    @cached_property
    def fast_dest(self) -> bool:
        """Outputs are ``dest_prefix + key + ".png"`` with nothing more to check: no dest column, and a
        checked prefix below the bucket's root (so no key reaches the provider's own records)."""
        return not self.dest_column and self.dest_prefix.count("/") > 3

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Columns that a table must have in some row, or it cannot be read as this spec says."""
        prompt = () if self.prompt_template else (self.prompt_column,)
        return (self.key_column, self.source_columns[0], *[c for c in prompt if c])


class PlannedRow(NamedTuple):
    """A good row: one edit's arguments (a tuple: a table makes 100,000 of them)."""

    key: str
    line: int
    sources: tuple[str, ...]
    prompt: str
    size: str
    dest: str


class BadRow(NamedTuple):
    """A row that is not edited, and why; ``key`` is what the row had, perhaps empty."""

    key: str
    line: int
    reason: str


def _text(value: object) -> str:
    """A field as text: None is empty; numbers as they print (a CSV's and a JSON's ids agree)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _uri_problem(uri: str) -> str | None:
    if not uri.startswith("s3://"):
        return "is not an s3:// URI"
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key or key.endswith("/"):
        return "names no bucket and key"
    problem = key_problem(key)
    return f"has {problem}" if problem else None


def _sources(fields: Mapping[str, object], spec: RowSpec) -> tuple[str, ...] | str:
    """The row's source URIs, or why it has none that can be read."""
    if len(spec.source_columns) == 1:  # the common case, without the loops
        value = fields.get(spec.source_columns[0])
        if isinstance(value, str):
            uri = value.strip()
            if not uri:
                return f"field {spec.source_columns[0]!r} is missing or empty"
            problem = _uri_problem(uri)
            return (
                (uri,)
                if problem is None
                else f"source {uri!r:.200} in field {spec.source_columns[0]!r} {problem}"
            )
    found: list[str] = []
    for n, column in enumerate(spec.source_columns):
        value = fields.get(column)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if n == 0 and not any(_text(v).strip() for v in values):
            return f"field {column!r} is missing or empty"
        for item in values:
            uri = _text(item).strip()
            if not uri:
                continue
            problem = _uri_problem(uri)
            if problem:
                return f"source {uri!r:.200} in field {column!r} {problem}"
            found.append(uri)
    if len(found) > MAX_IMAGES:
        return f"{len(found)} source URIs; at most {MAX_IMAGES} are allowed"
    return tuple(found)


def _prompt(fields: Mapping[str, object], spec: RowSpec) -> str:
    own = _text(fields.get(spec.prompt_column)) if spec.prompt_column else ""
    if own.strip() or not spec.prompt_template:
        if not own.strip():
            raise BetterTokenInputError(f"field {spec.prompt_column!r} (the prompt) is missing or empty")
        return check_prompt(own)
    pattern, names = spec.template_format
    values = []
    for name in names:
        value = fields.get(name)
        text = value if isinstance(value, str) else _text(value)
        # A CSV cannot tell a missing value from an empty one: neither makes a prompt worth paying for.
        if not text or text.isspace():
            raise BetterTokenInputError(f"prompt_template uses ${{{name}}}, which the row has no value for")
        values.append(text)
    rendered = pattern.format(*values)
    try:
        return check_prompt(rendered)
    except BetterTokenInputError as err:
        raise BetterTokenInputError(f"the rendered {err}") from None


def _dest(key: str, fields: Mapping[str, object], spec: RowSpec) -> str:
    own = _text(fields.get(spec.dest_column)).strip() if spec.dest_column else ""
    if own and not own.endswith((".png", "/")):
        raise BetterTokenInputError(
            f"dest {own!r:.200} in field {spec.dest_column!r} must end in .png, or in '/' for a prefix"
        )
    dest = own if own.endswith(".png") else (own or spec.dest_prefix) + key + ".png"
    problem = _uri_problem(dest)
    if problem or dest.split("/", 3)[3].startswith(_RESERVED):
        why = problem or f"is under the provider's own {_RESERVED}"
        raise BetterTokenInputError(f"output {dest!r:.200} {why}; give a dest ending in .png or a prefix")
    return dest


def plan_row(fields: Mapping[str, object], line: int, spec: RowSpec) -> PlannedRow | BadRow:
    """One row as an edit, or as a bad row with the reason; ``line`` is where it is in the table."""
    return spec.quick_plan(fields, line) or _plan_row(fields, line, spec)


def _quick_planner(spec: RowSpec) -> Callable[[Mapping[str, object], int], PlannedRow | None]:
    """A row's plan in the common case, in one function with its settings bound (a table's 100,000 rows
    go through it); None where :func:`_plan_row` must decide, and say why a row is bad.

    It accepts only rows that :func:`_plan_row` would plan the same: text fields, one source column,
    outputs under ``dest_prefix``, and no own prompt to prefer over the template.
    """
    if len(spec.source_columns) != 1 or not spec.fast_dest or not spec.prompt_template or spec.prompt_column:
        return lambda fields, line: None
    key_column, source_column, size_column = spec.key_column, spec.source_columns[0], spec.size_column
    pattern, names = spec.template_format
    prefix, default_size, sizes = spec.dest_prefix, spec.default_size, frozenset(SIZES)

    def plan(fields: Mapping[str, object], line: int) -> PlannedRow | None:
        key, source = fields.get(key_column), fields.get(source_column)
        if type(key) is not str or type(source) is not str:
            return None
        key, source = key.strip(), source.strip()
        if not key or key_problem(key) or _uri_problem(source):
            return None
        values = [fields.get(name) for name in names]
        for value in values:
            if type(value) is not str or not value or value.isspace():
                return None
        prompt = pattern.format(*values)
        size = fields.get(size_column, "") if size_column else ""
        size = (size.strip() if type(size) is str else None) or default_size
        if size not in sizes or prompt.isspace() or len(prompt) > MAX_PROMPT_CHARS:
            return None
        return PlannedRow(key, line, (source,), prompt, size, f"{prefix}{key}.png")

    return plan


def _plan_row(fields: Mapping[str, object], line: int, spec: RowSpec) -> PlannedRow | BadRow:
    key = _text(fields.get(spec.key_column)).strip()
    if not key:
        return BadRow("", line, f"field {spec.key_column!r} (the key) is missing or empty")
    problem = key_problem(key)
    if problem or key.startswith("/"):
        why = problem or "a leading '/'"
        return BadRow(key, line, f"key {key!r:.200} has {why}, so it names no safe output")
    sources = _sources(fields, spec)
    if isinstance(sources, str):
        return BadRow(key, line, sources)
    try:
        prompt = _prompt(fields, spec)
        size_value = _text(fields.get(spec.size_column)).strip() if spec.size_column else ""
        size = check_size(size_value or spec.default_size)
        dest = spec.dest_prefix + key + ".png" if spec.fast_dest else _dest(key, fields, spec)
    except BetterTokenInputError as err:
        return BadRow(key, line, str(err))
    return PlannedRow(key, line, sources, prompt, size, dest)


class Seen:
    """The keys and outputs of the rows planned so far: a later row with either is bad, naming the line."""

    def __init__(self, *, outputs: bool = True) -> None:
        """:param outputs: check outputs too; not needed where each output is named after its key."""
        self._keys: dict[str, int] = {}
        self._outputs: dict[str, int] | None = {} if outputs else None

    def check(self, row: PlannedRow) -> PlannedRow | BadRow:
        first = self._keys.get(row.key)
        if first is not None:
            return BadRow(
                row.key, row.line, f"key {row.key!r:.200} is also on line {first}; keys must be unique"
            )
        if self._outputs is not None:
            first = self._outputs.get(row.dest)
            if first is not None:
                return BadRow(row.key, row.line, f"the row on line {first} writes the same output {row.dest}")
            self._outputs[row.dest] = row.line
        self._keys[row.key] = row.line
        return row
