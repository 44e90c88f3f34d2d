"""Planning edits from a listing: each image key under a source prefix paired with its output key."""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from airflow_bettertoken.exceptions import BetterTokenInputError
from airflow_bettertoken.storage.locations import S3Location, check_output_key

__all__ = ["IMAGE_SUFFIXES", "plan_edits"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def plan_edits(keys: Sequence[str], source: S3Location, dest: S3Location) -> list[dict[str, str]]:
    """Pair each image key under ``source`` with its output under ``dest``, keeping the relative path.

    ``in/a/x.jpg`` becomes ``out/a/x.png``. Two sources that would share an output
    (``a/x.jpg`` and ``a/x.png``) are refused, naming both.
    """
    edits: dict[str, dict[str, str]] = {}
    for key in sorted(keys):
        if not key.lower().endswith(IMAGE_SUFFIXES):
            continue
        relative = key[len(source.key) :]
        output_key = dest.key + posixpath.splitext(relative)[0] + ".png"
        check_output_key(output_key)
        edit = {"source": S3Location(source.bucket, key).uri, "dest": S3Location(dest.bucket, output_key).uri}
        if output_key in edits:
            raise BetterTokenInputError(
                f"{edits[output_key]['source']} and {edit['source']} would both be written "
                f"to {edit['dest']}; rename one of them"
            )
        edits[output_key] = edit
    return list(edits.values())
