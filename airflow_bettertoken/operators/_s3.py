"""What the operators that write records to S3 share: the AWS connection and ``s3_extra_args``."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook

from airflow_bettertoken.storage.s3_extra_args import S3ExtraArgs

__all__ = ["S3Writer"]


class S3Writer:
    """A mixin for an operator that writes to S3 with ``aws_conn_id`` and ``s3_extra_args`` (templated)."""

    s3_extra_args: dict[str, Any] | None
    aws_conn_id: str | None

    def _take_s3_arguments(self, s3_extra_args: dict[str, Any] | None, aws_conn_id: str | None) -> None:
        """Keep them, and check ``s3_extra_args`` now, when the DAG is parsed, unless it is a template."""
        self.s3_extra_args = s3_extra_args
        self.aws_conn_id = aws_conn_id
        S3ExtraArgs.check_literal(s3_extra_args)

    @cached_property
    def s3_hook(self) -> S3Hook:
        return S3Hook(aws_conn_id=self.aws_conn_id)

    @property
    def s3_write_args(self) -> dict[str, Any]:
        """What every write adds, from the rendered ``s3_extra_args``."""
        return S3ExtraArgs.parse(self.s3_extra_args).for_write()
