"""The preflight: the mistakes every edit task would repeat, caught once, before anything is paid."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.common.compat.sdk import BaseOperator

from airflow_bettertoken.exceptions import (
    BetterTokenConfigError,
    BetterTokenInputError,
    fail_task_on_permanent_error,
)
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
from airflow_bettertoken.storage.locations import S3Location, parse_s3_prefix
from airflow_bettertoken.storage.objects import ImageStore

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = ["BetterTokenPreflightOperator", "preflight"]


def preflight(hook: BetterTokenHook, store: ImageStore, dest: S3Location) -> None:
    """Check the BetterToken connection with ``GET /models`` (never paid) and that ``dest`` can be written.

    :raises BetterTokenConfigError: naming the connection and what to fix.
    :raises BetterTokenInputError: naming the bucket and what to fix.
    """
    ok, message = hook.test_connection()
    if not ok:
        raise BetterTokenConfigError(f"Preflight: the BetterToken connection does not work. {message}")
    try:
        store.check_writable(dest)
    except BetterTokenInputError as err:
        # The same error, said to come from the preflight; chaining it would print the text twice.
        raise BetterTokenInputError(f"Preflight: {err}") from err.__cause__


class BetterTokenPreflightOperator(BaseOperator):
    """Fail once, before any paid call, when the connection or the destination is wrong.

    :class:`~airflow_bettertoken.operators.list_images.BetterTokenListImagesOperator` runs the same
    checks itself; use this operator in front of edits that you plan some other way.

    :param dest_prefix: ``s3://bucket/prefix/`` where the outputs go. (templated)
    :param bettertoken_conn_id: the BetterToken connection.
    :param aws_conn_id: the AWS connection for S3.
    """

    template_fields: Sequence[str] = ("dest_prefix",)

    def __init__(
        self,
        *,
        dest_prefix: str,
        bettertoken_conn_id: str = BetterTokenHook.default_conn_name,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dest_prefix = dest_prefix
        self.bettertoken_conn_id = bettertoken_conn_id
        self.aws_conn_id = aws_conn_id

    @cached_property
    def hook(self) -> BetterTokenHook:
        return BetterTokenHook(self.bettertoken_conn_id)

    def execute(self, context: Context) -> None:
        with fail_task_on_permanent_error():
            dest = parse_s3_prefix(self.dest_prefix, "dest_prefix")
            preflight(self.hook, ImageStore(S3Hook(aws_conn_id=self.aws_conn_id)), dest)
        self.log.info(
            "Preflight passed: %s works and %s can be written", self.bettertoken_conn_id, self.dest_prefix
        )
