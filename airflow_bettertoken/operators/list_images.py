"""List the images under an S3 prefix as edit arguments, ready for ``.expand_kwargs(...)``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import BaseOperator, conf

from airflow_bettertoken.exceptions import BetterTokenInputError, fail_task_on_permanent_error
from airflow_bettertoken.storage.listing import plan_edits
from airflow_bettertoken.storage.locations import parse_s3_prefix

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = ["BetterTokenListImagesOperator"]


class BetterTokenListImagesOperator(BaseOperator):
    """List PNG, JPEG and WEBP images under a prefix, each paired with its output under another prefix.

    Returns ``[{"source": ..., "dest": ...}, ...]`` for
    ``BetterTokenImageEditOperator.partial(...).expand_kwargs(...)``. An empty prefix gives an empty
    list, and Airflow then skips the mapped edit instead of failing it.

    :param source_prefix: ``s3://bucket/prefix/`` to list, recursively. (templated)
    :param dest_prefix: ``s3://bucket/prefix/`` for the outputs. (templated)
    :param aws_conn_id: the AWS connection for S3.
    """

    template_fields: Sequence[str] = ("source_prefix", "dest_prefix")

    def __init__(
        self, *, source_prefix: str, dest_prefix: str, aws_conn_id: str | None = "aws_default", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.source_prefix = source_prefix
        self.dest_prefix = dest_prefix
        self.aws_conn_id = aws_conn_id

    @cached_property
    def s3_hook(self) -> S3Hook:
        return S3Hook(aws_conn_id=self.aws_conn_id)

    def execute(self, context: Context) -> list[dict[str, str]]:
        with fail_task_on_permanent_error():
            return self._list()

    def _list(self) -> list[dict[str, str]]:
        source = parse_s3_prefix(self.source_prefix, "source_prefix")
        dest = parse_s3_prefix(self.dest_prefix, "dest_prefix")
        keys = self.s3_hook.list_keys(bucket_name=source.bucket, prefix=source.key) or []
        edits = plan_edits(keys, source, dest)
        limit = conf.getint("core", "max_map_length")
        if len(edits) > limit:
            raise BetterTokenInputError(
                f"{len(edits)} images under {self.source_prefix} exceed [core] max_map_length={limit}. "
                "Run them in chunks (one run per sub-prefix), or raise the limit with "
                "AIRFLOW__CORE__MAX_MAP_LENGTH"
            )
        self.log.info("Found %d images under %s", len(edits), self.source_prefix)
        return edits
