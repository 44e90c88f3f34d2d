"""Which S3 objects a gallery row may show, decided only from records that the REST API cannot forge.

XCom can be created and changed by any user with XCom rights on a DAG, so it never names an object
to read nor the connection to read it with. A row shows images only when its XCom agrees with:

1. the task instance's **rendered template fields** (``source``, ``dest``, ``aws_conn_id``), which only
   the worker writes: the output must be where ``dest`` puts it, the sources exactly ``source``; or,
   when Airflow no longer keeps them (it keeps a task's last ``max_num_rendered_ti_fields_per_task``
   runs), with
2. the **output object's own S3 metadata**, written with it by the edit task: it must name this very
   task instance, and its recorded sources must be the XCom's. A forged URI names an object whose
   metadata names another task instance, or none.

The objects read are then those of the trusted record, with the connection of an admin's setting, the
rendered fields or the DAG (:func:`choose_connection`). A row that cannot be verified shows its XCom
as text, with no image, and the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.plugins._edit_tasks import AwsConnection, EditTask
from airflow_bettertoken.protocol.result import (
    EditFailure,
    EditXCom,
    TaskInstanceIdentity,
    names_sources,
    was_made_by,
)
from airflow_bettertoken.storage.locations import S3Location, output_location, parse_dest, parse_s3_uri
from airflow_bettertoken.storage.s3_extra_args import read_args_of

#: The object metadata of an S3 object read with a connection, or None when it cannot be read.
HeadMetadata = Callable[[AwsConnection, S3Location], "Mapping[str, str] | None"]

BY_RENDERED_FIELDS = "the task's rendered source and dest"
BY_S3_METADATA = "the output's S3 metadata (this task instance wrote it)"


@dataclass(frozen=True)
class Reported:
    """What the task instance's XCom says: a report to show, never a record of which object to read.

    :param unreadable: the XCom key whose value is there but is not an edit record.
    :param unreadable_text: that value as JSON, cut short, to be shown as text.
    """

    result: EditXCom | None = None
    failure: EditFailure | None = None
    unreadable: str | None = None
    unreadable_text: str | None = None


@dataclass(frozen=True)
class Shown:
    """What a row may show: objects from a trusted record, or the reason it shows none.

    :param checked_against: the trusted record the XCom agreed with.
    :param reason: set when the row's XCom could not be verified: it is shown as text, with no image.
    """

    output: S3Location | None = None
    sources: tuple[S3Location, ...] = ()
    aws_conn: AwsConnection | None = None
    checked_against: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Planned:
    """The objects the task was asked to read and write, from its rendered ``source`` and ``dest``."""

    sources: tuple[S3Location, ...]
    output: S3Location
    dest: str


def _uris(source: Any) -> list[Any] | None:
    """A ``source`` argument (one URI or a list) as a list; None when it is neither."""
    if isinstance(source, str):
        return [source]
    return list(source) if isinstance(source, list) else None


def planned_objects(rendered: Mapping[str, Any]) -> Planned | None:
    """The sources and output the rendered fields name; None when they name no S3 objects.

    A truncated or redacted field (Airflow cuts long rendered values) is not a URI, so it reads as None.
    """
    uris, dest = _uris(rendered.get("source")), rendered.get("dest")
    if not uris or not isinstance(dest, str):
        return None
    try:
        sources = tuple(parse_s3_uri(uri, "source") for uri in uris)
        return Planned(sources, output_location(parse_dest(dest), sources[0]), dest)
    except BetterTokenInputError:
        return None


def choose_connection(
    admin_conn_id: str | None, rendered: Mapping[str, Any] | None, task: EditTask
) -> AwsConnection | None:
    """The AWS connection to read a row's objects with: never XCom's; None when nothing trusted says.

    Its read arguments are those of the task's ``s3_extra_args``, rendered or as the DAG fixes them, with
    an admin's connection too: a requester-pays bucket wants ``RequestPayer`` from every reader.
    """
    read_args = read_args_of(rendered["s3_extra_args"]) if rendered and "s3_extra_args" in rendered else None
    read_args = read_args if read_args is not None else task.read_args or ()
    if admin_conn_id:
        return AwsConnection(
            admin_conn_id, "the gallery's setting [bettertoken] gallery_aws_conn_id", read_args
        )
    if rendered is not None and "aws_conn_id" in rendered:
        value = rendered["aws_conn_id"]
        if value is None or isinstance(value, str):
            return AwsConnection(value, "the task's rendered aws_conn_id", read_args)
    return replace(task.aws_conn, read_args=read_args) if task.aws_conn else None


def _failure_agrees(failure: EditFailure, rendered: Mapping[str, Any]) -> bool:
    return (_uris(failure.source), failure.dest) == (_uris(rendered.get("source")), rendered.get("dest"))


def _against_rendered(reported: Reported, rendered: Mapping[str, Any], planned: Planned) -> str | None:
    """Why the XCom disagrees with the rendered fields, or None when it agrees."""
    result, failure = reported.result, reported.failure
    planned_uris = [location.uri for location in planned.sources]
    if result is not None and (result.output_uri, list(result.source_uris)) != (
        planned.output.uri,
        planned_uris,
    ):
        return f"its XCom names other objects than {BY_RENDERED_FIELDS} (output {planned.output.uri})"
    if failure is not None and not _failure_agrees(failure, rendered):
        return f"its failure record names other objects than {BY_RENDERED_FIELDS}"
    if "aws_conn_id" in rendered:
        for record in (result, failure):
            if record is not None and record.aws_conn_id != rendered["aws_conn_id"]:
                return "its XCom names another AWS connection than the task's rendered aws_conn_id"
    return None


def _against_metadata(
    ti: TaskInstanceIdentity, result: EditXCom, aws_conn: AwsConnection, head: HeadMetadata
) -> tuple[S3Location, tuple[S3Location, ...]] | str:
    """The output and sources when the output's S3 metadata vouches for the XCom; else why not."""
    try:
        output = parse_s3_uri(result.output_uri, "output")
        sources = tuple(parse_s3_uri(uri, "source") for uri in result.source_uris)
    except BetterTokenInputError:
        return "its XCom names no S3 objects"
    metadata = head(aws_conn, output)
    # One answer for a missing, unreadable or foreign object: the reason must not tell which it was.
    if metadata is None or not was_made_by(metadata, ti):
        return "the output its XCom names does not carry this task instance's name in its S3 metadata"
    if not names_sources(metadata, list(result.source_uris)):
        return "the sources its XCom names are not those recorded on the output"
    return output, sources


def decide(
    ti: TaskInstanceIdentity,
    reported: Reported,
    rendered: Mapping[str, Any] | None,
    aws_conn: AwsConnection | None,
    head: HeadMetadata,
    *,
    no_rendered_fields: str,
) -> Shown:
    """What one edit task instance's row may show.

    :param rendered: the task instance's rendered fields; None when Airflow holds none.
    :param aws_conn: from :func:`choose_connection`.
    :param head: reads an object's S3 metadata; called only when the rendered fields cannot decide.
    :param no_rendered_fields: why there are none, for the reason shown.
    """
    if reported.unreadable:
        return Shown(reason=f"its XCom {reported.unreadable!r} is not an edit's record")
    planned = planned_objects(rendered) if rendered is not None else None
    if planned is not None:
        reason = _against_rendered(reported, rendered or {}, planned)
        if reason:
            return Shown(reason=reason)
        output = planned.output if reported.result is not None else None
        shown = Shown(output, planned.sources, aws_conn, BY_RENDERED_FIELDS)
    elif reported.result is None and reported.failure is None:
        return Shown()  # nothing recorded, so nothing to verify (the task has not run, or not that far)
    elif reported.result is None and rendered is not None and _failure_agrees(reported.failure, rendered):
        return Shown(checked_against=BY_RENDERED_FIELDS)  # it failed on inputs that name no S3 object
    else:
        missing = no_rendered_fields if rendered is None else "its rendered source and dest are not S3 URIs"
        if reported.result is None:
            return Shown(reason=f"{missing}, and it wrote no output whose S3 metadata could vouch for it")
        if aws_conn is None:
            return Shown(reason=f"{missing}, and the AWS connection to check its output with is not known")
        checked = _against_metadata(ti, reported.result, aws_conn, head)
        if isinstance(checked, str):
            return Shown(reason=f"{missing}, and {checked}")
        shown = Shown(checked[0], checked[1], aws_conn, BY_S3_METADATA)
    if aws_conn is None and (shown.output or shown.sources):
        return Shown(
            reason="the gallery does not know the task's AWS connection (it is templated or mapped, and "
            "the rendered fields are gone); an admin can set [bettertoken] gallery_aws_conn_id"
        )
    return shown
