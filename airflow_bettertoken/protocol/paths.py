"""Which paths can be part of an output key: pure, so that a row's key is checked before any I/O."""

from __future__ import annotations

import unicodedata

__all__ = ["key_problem"]


def key_problem(path: str) -> str | None:
    """Why ``path`` cannot be part of an output key, or None.

    A control character, or an empty (``//``), ``.`` or ``..`` path segment: S3 stores such keys, but
    as paths they are ambiguous or unsafe.
    """
    # The common case first, in a few C calls: a table's rows check 100,000 keys and URIs at a time.
    if path and path[0] not in "./" and "//" not in path and "/." not in path and path.isprintable():
        return None
    # isprintable() is False for every control character, and it is cheap: the scan runs only then.
    if not path.isprintable() and any(unicodedata.category(ch) == "Cc" for ch in path):
        return "a control character"
    segments = path.rstrip("/").split("/")
    if "" in segments:
        return "an empty path segment ('//')"
    if ".." in segments:
        return "a '..' path segment"
    if "." in segments:
        return "a '.' path segment"
    return None
