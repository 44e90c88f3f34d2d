"""The run manifest: what a mapped edit run did, reduced from its tasks' XCom return values."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def build_manifest(edits: Iterable[Mapping[str, str]], results: Iterable[Mapping[str, Any] | None]) -> dict:
    """Reduce the planned edits and the edit tasks' return values into one JSON-safe manifest.

    :param edits: the planned ``{"source", "dest"}`` pairs, as the listing returned them.
    :param results: the edit tasks' XCom values; a failed task has none, so it is counted as failed.
    """
    planned = list(edits)
    finished = [r for r in results if r]
    by_output = {r["output_uri"]: r for r in finished}
    usage: dict[str, int] = {}
    for result in finished:
        for name, value in (result.get("usage") or {}).items():
            if isinstance(value, int) and not isinstance(value, bool):
                usage[name] = usage.get(name, 0) + value
    skipped = sum(1 for r in finished if r["skipped"])
    return {
        "counts": {
            "planned": len(planned),
            "done": len(finished) - skipped,
            "skipped": skipped,
            "failed": sum(1 for e in planned if e["dest"] not in by_output),
        },
        "size_mismatches": [
            {
                "output_uri": r["output_uri"],
                "requested_size": r["requested_size"],
                "width": r["width"],
                "height": r["height"],
            }
            for r in finished
            if r["size_matches"] is False
        ],
        "usage": usage,
        "failed_sources": [e["source"] for e in planned if e["dest"] not in by_output],
        "outputs": [
            {
                "output_uri": r["output_uri"],
                "width": r["width"],
                "height": r["height"],
                "requested_size": r["requested_size"],
                "bytes": r["bytes"],
                "sha256": r["sha256"],
                "skipped": r["skipped"],
            }
            for r in sorted(finished, key=lambda r: r["output_uri"])
        ],
    }
