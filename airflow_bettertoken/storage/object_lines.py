"""An S3 object read a line at a time, in bounded memory: ranged GETs of one version of it.

A results table or a plan file may hold 100,000 lines; they are read a range at a time (each GET
names the version the HEAD found, so that an object replaced meanwhile is an error, not a mix of two
versions), and never held whole.
"""

from __future__ import annotations

from collections.abc import Iterator

from airflow_bettertoken.exceptions import BetterTokenRecordError, BetterTokenStorageError
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.s3_io import S3IO, Presence

__all__ = ["object_lines"]

#: Bytes per ranged GET: a few megabytes hold thousands of lines and keep memory small.
CHUNK_BYTES = 4 * 1024 * 1024


def object_lines(
    io: S3IO, location: S3Location, what: str, *, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[bytes] | None:
    """The object's lines (without their line ends; blank lines left out), or None when it is missing.

    :param what: the object's part, for the errors (e.g. "the previous latest results table").
    :raises BetterTokenStorageError: when a 403 hides it (see :mod:`.s3_io`), naming the permission.
    """
    head = io.head(location)
    if head.presence is Presence.MISSING:
        return None
    if head.presence is Presence.HIDDEN:
        raise BetterTokenStorageError(
            f"S3 refused to say whether {what} {location.uri} exists (403): connection "
            f"{io.conn_id!r} needs s3:GetObject on it and s3:ListBucket on bucket {location.bucket!r}",
            operation="HeadObject",
            uri=location.uri,
            status=403,
        )
    return _lines(io, location, what, head.etag, head.content_length or 0, chunk_bytes)


def _lines(
    io: S3IO, location: S3Location, what: str, etag: str | None, size: int, chunk_bytes: int
) -> Iterator[bytes]:
    rest = b""
    for start in range(0, size, chunk_bytes):
        end = min(start + chunk_bytes, size) - 1
        read = io.get(location, byte_range=f"bytes={start}-{end}", if_match=etag)
        if not read.found or read.body is None:
            raise BetterTokenRecordError(
                f"{what} {location.uri} changed or went away while it was read ({read.presence.value}); "
                "run the task again"
            )
        lines = (rest + read.body).split(b"\n")
        rest = lines.pop()
        yield from (line for line in lines if line.strip())
    if rest.strip():
        yield rest
