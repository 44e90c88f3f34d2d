"""One S3 store: outside ``storage/``, no module calls an S3 client or an ``S3Hook`` I/O method.

Every request then carries the ``s3_extra_args``, the 403 rule, the explained errors and botocore's
retries as the connection configures them, because ``storage/s3_io.py`` is the only place that asks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "airflow_bettertoken"
#: What S3 clients and ``S3Hook`` offer to read or write objects, or to get at the client itself.
S3_CALLS = frozenset(
    {
        "check_for_bucket",
        "check_for_key",
        "copy_object",
        "delete_object",
        "delete_objects",
        "download_file",
        "get_bucket",
        "get_client_type",
        "get_conn",
        "get_key",
        "get_object",
        "get_paginator",
        "head_bucket",
        "head_object",
        "list_keys",
        "list_objects_v2",
        "list_prefixes",
        "load_bytes",
        "load_file",
        "load_string",
        "put_object",
        "read_key",
        "upload_fileobj",
    }
)
OUTSIDE_THE_STORE = sorted(
    path for path in PACKAGE.rglob("*.py") if path.relative_to(PACKAGE).parts[0] not in ("storage", "testing")
)


def s3_calls(source: str) -> list[str]:
    """The S3 calls and boto imports in a module's source, as ``line: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in S3_CALLS:
            found.append(f"{node.lineno}: .{node.func.attr}()")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"{node.lineno}: import {name}" for name in names if "boto" in name]
    return found


@pytest.mark.parametrize("path", OUTSIDE_THE_STORE, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_s3_request_outside_the_store(path):
    assert s3_calls(path.read_text()) == []


def test_the_check_finds_a_direct_call_and_a_client():
    source = "import boto3\n\ndef f(hook):\n    return hook.head_object('k', 'b')\n"
    assert s3_calls(source) == ["1: import boto3", "4: .head_object()"]
    assert PACKAGE / "plugins" / "_images.py" in OUTSIDE_THE_STORE
