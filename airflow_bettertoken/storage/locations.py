"""S3 URIs for sources and outputs: parsing, checking, and naming an output after its source."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.protocol.paths import key_problem

__all__ = [
    "RESERVED_PREFIX",
    "S3Location",
    "check_output_key",
    "key_problem",
    "output_location",
    "parse_dest",
    "parse_s3_prefix",
    "parse_s3_uri",
]

#: The provider's own records at the root of a destination bucket (the spend ledger, run records,
#: evidence, spilled images): never a source, never an output.
RESERVED_PREFIX = "_bettertoken/"


@dataclass(frozen=True, order=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _split(uri: object, what: str, form: str) -> tuple[str, str]:
    """Bucket and key of an ``s3://`` URI; ``form`` is the shape the error asks for."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise BetterTokenInputError(f"{what} must be {form}, got {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise BetterTokenInputError(f"{what} {uri!r} names no bucket")
    return bucket, key


def parse_s3_uri(uri: object, what: str) -> S3Location:
    """``s3://bucket/key`` as a location; ``what`` names the input in the error."""
    bucket, key = _split(uri, what, "an s3://bucket/key URI")
    if not key:
        raise BetterTokenInputError(f"{what} {uri!r} names no key")
    return S3Location(bucket, key)


def parse_s3_prefix(uri: object, what: str) -> S3Location:
    """``s3://bucket/prefix/`` as a location whose key is the prefix (empty for the bucket's root)."""
    form = "an s3://bucket/prefix/ URI ending in '/'"
    bucket, key = _split(uri, what, form)
    if not uri.endswith("/"):
        raise BetterTokenInputError(f"{what} must be {form}, got {uri!r}")
    return S3Location(bucket, key)


def check_output_key(key: str, what: str = "dest") -> None:
    """Refuse empty or absolute keys, `.`/`..` segments, control characters, and names not ending .png."""
    if not key:
        raise BetterTokenInputError(f"{what} names no key; use s3://bucket/key.png or s3://bucket/prefix/")
    if key.startswith("/"):
        raise BetterTokenInputError(f"{what} key {key!r} must not start with '/'")
    problem = key_problem(key)
    if problem:
        raise BetterTokenInputError(
            f"{what} key {key!r} has {problem}; keys must not contain control characters or "
            "empty, '.' or '..' path segments"
        )
    if not key.endswith((".png", "/")):
        raise BetterTokenInputError(
            f"{what} key {key!r} must end in .png, or in '/' to name the output after the source"
        )


def parse_dest(dest: object) -> S3Location:
    """The ``dest`` argument: a full ``.png`` key, or a prefix ending in ``/``."""
    bucket, key = _split(dest, "dest", "s3://bucket/key.png or s3://bucket/prefix/")
    check_output_key(key)
    return S3Location(bucket, key)


def output_location(dest: S3Location, first_source: S3Location) -> S3Location:
    """The output object: ``dest`` itself, or under a prefix, the first source's stem plus ``.png``."""
    if dest.key and not dest.key.endswith("/"):
        return dest
    stem = posixpath.splitext(posixpath.basename(first_source.key))[0]
    output = S3Location(dest.bucket, f"{dest.key}{stem}.png")
    check_output_key(output.key)
    return output
