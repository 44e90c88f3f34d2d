"""Where a catalog backfill (or a table's enrichment) stands: the chain's own record in S3, found from a
DAG run.

The record is found from what only the worker writes: the rendered fields of the run's planner (the
catalog listing, or a table's row planner)
(its ``dest_prefix`` names the bucket, its ``aws_conn_id`` the connection, unless an admin's
``[bettertoken] gallery_aws_conn_id`` says otherwise). The key is fixed by the DAG and the run:
``_bettertoken/chains/<dag>/<first run of the chain>.json``. Nothing read from XCom, a query string or
a conf decides which object is read, and the record must name this very DAG and chain.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow.models.renderedtifields import RenderedTaskInstanceFields
from sqlalchemy import select
from sqlalchemy.orm import Session

from airflow_bettertoken.exceptions import (
    BetterTokenInputError,
    BetterTokenRecordError,
    BetterTokenStorageError,
)
from airflow_bettertoken.plugins._edit_tasks import LISTING_FIELDS
from airflow_bettertoken.plugins._images import S3Objects
from airflow_bettertoken.storage.chain import ChainState, chain_location, chain_root
from airflow_bettertoken.storage.locations import S3Location, parse_s3_prefix
from airflow_bettertoken.storage.s3_extra_args import read_args_of
from airflow_bettertoken.storage.s3_io import Presence

_DEFAULT_AWS_CONN_ID = "aws_default"
# The chain's record is small, but nothing read here may be large.
_MAX_RECORD_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Catalog:
    """A chain's record, or why there is none to show.

    :param location: where the record is, or would be.
    :param reason: set when no record can be shown.
    """

    state: ChainState | None
    location: S3Location | None
    reason: str | None = None


def listing_fields(session: Session, dag_id: str, run_id: str) -> Mapping[str, Any] | None:
    """The rendered fields of the run's listing task: the first task whose fields are a listing's."""
    rtif = RenderedTaskInstanceFields
    found = session.execute(
        select(rtif.task_id, rtif.rendered_fields)
        .where(rtif.dag_id == dag_id, rtif.run_id == run_id, rtif.map_index == -1)
        .order_by(rtif.task_id)
    ).all()
    for _, fields in found:
        if isinstance(fields, Mapping) and set(fields) >= LISTING_FIELDS:
            return fields
    return None


def find_catalog(
    session: Session, objects: S3Objects, dag_id: str, run_id: str, admin_conn_id: str | None
) -> Catalog:
    """The record of the chain that ``run_id`` belongs to, read as the listing task's fields say."""
    fields = listing_fields(session, dag_id, run_id)
    if fields is None:
        return Catalog(
            None,
            None,
            "this run has no catalog listing whose rendered fields Airflow still keeps (it keeps those "
            "of a task's latest runs only)",
        )
    try:
        dest = parse_s3_prefix(fields["dest_prefix"], "dest_prefix")
    except BetterTokenInputError as err:
        return Catalog(None, None, f"the listing's rendered dest_prefix is not a prefix: {err}")
    location = chain_location(dest.bucket, dag_id, run_id)
    conn_id = admin_conn_id or fields.get("aws_conn_id") or _DEFAULT_AWS_CONN_ID
    if not isinstance(conn_id, str):
        return Catalog(None, location, "the listing's rendered aws_conn_id is not a connection id")
    # The listing's read arguments, as rendered; a value Airflow cut short reads as none.
    store = objects.store(conn_id, read_args_of(fields.get("s3_extra_args")) or ())
    try:
        head = store.head(location)
        if head.presence is Presence.MISSING:
            return Catalog(None, location, "there is no chain record (yet): the listing keeps one per chain")
        size = head.content_length or 0
        if head.found and size > _MAX_RECORD_BYTES:
            return Catalog(None, location, f"the chain record is {size} bytes, too large to show")
        read = store.get(location, if_match=head.etag, max_bytes=_MAX_RECORD_BYTES) if head.found else head
    except BetterTokenStorageError as err:
        return Catalog(None, location, f"S3 failed to answer for the chain record: {err}")
    if read.presence is Presence.HIDDEN:
        return Catalog(
            None, location, f"S3 answered 403: connection {conn_id!r} may not read the chain record"
        )
    if not read.found or read.body is None or len(read.body) > _MAX_RECORD_BYTES:
        return Catalog(None, location, "the chain record changed while it was read; load the page again")
    try:
        state = ChainState.load(json.loads(read.body), location.uri)
    except (ValueError, BetterTokenRecordError) as err:
        return Catalog(None, location, f"the chain record cannot be read ({type(err).__name__})")
    if (state.dag_id, state.root_run_id, state.dest_uri) != (dag_id, chain_root(run_id), dest.uri):
        return Catalog(None, location, "the chain record names another DAG, chain or destination")
    return Catalog(state, location)
