"""Write the manifest of a mapped edit run next to its outputs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import BaseOperator

from airflow_bettertoken.exceptions import fail_task_on_permanent_error
from airflow_bettertoken.storage.locations import parse_s3_uri
from airflow_bettertoken.storage.run_manifest import build_manifest

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context


def _materialize(values: Any) -> list[Any]:
    """A mapped task's XComs as a list. Indexing up to ``len`` asks for each value once; plain
    iteration would probe one offset past the end and log a spurious 'XCom not found'."""
    if values is None:
        return []
    return [values[index] for index in range(len(values))]


class BetterTokenManifestOperator(BaseOperator):
    """Reduce a mapped edit's results into a manifest JSON object on S3; returns its counts.

    Run it with ``trigger_rule="all_done"`` so that a run with failed edits still gets its manifest.

    :param edits: the listing's ``{"source", "dest"}`` pairs, e.g. ``list_task.output``. (templated)
    :param results: the mapped edit's return values, e.g. ``edit_task.output``. (templated)
    :param manifest_uri: where to write it, e.g. ``s3://bucket/edited/_manifest.json``. (templated)
    :param aws_conn_id: the AWS connection for S3.
    """

    template_fields: Sequence[str] = ("edits", "results", "manifest_uri")

    def __init__(
        self,
        *,
        edits: Any,
        results: Any,
        manifest_uri: str,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.edits = edits
        self.results = results
        self.manifest_uri = manifest_uri
        self.aws_conn_id = aws_conn_id

    @cached_property
    def s3_hook(self) -> S3Hook:
        return S3Hook(aws_conn_id=self.aws_conn_id)

    def execute(self, context: Context) -> dict[str, int]:
        with fail_task_on_permanent_error():
            location = parse_s3_uri(self.manifest_uri, "manifest_uri")
        manifest = {
            "dag_id": context["ti"].dag_id,
            "run_id": context["ti"].run_id,
            **build_manifest(self.edits or [], _materialize(self.results)),
        }
        self.s3_hook.load_string(
            json.dumps(manifest, indent=2), key=location.key, bucket_name=location.bucket, replace=True
        )
        self.log.info("Wrote %s: %s", self.manifest_uri, manifest["counts"])
        return manifest["counts"]
