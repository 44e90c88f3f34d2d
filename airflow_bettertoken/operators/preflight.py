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
    BetterTokenStorageError,
    fail_task_on_permanent_error,
)
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
from airflow_bettertoken.storage.findings import StoreCheck
from airflow_bettertoken.storage.locations import S3Location, parse_s3_prefix
from airflow_bettertoken.storage.objects import ImageStore
from airflow_bettertoken.storage.s3_extra_args import S3ExtraArgs
from airflow_bettertoken.storage.s3_io import BucketAccess

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

__all__ = ["BetterTokenPreflightOperator", "preflight"]


def preflight(
    hook: BetterTokenHook, store: ImageStore, dest: S3Location, *, stage: S3Location | None = None
) -> StoreCheck:
    """Check the BetterToken connection with ``GET /models`` (never paid) and that the edits' prefix can
    be written as the edits will write it (with the store's ``s3_extra_args``).

    :param dest: where the outputs go, and are published once approved when ``stage`` is given.
    :param stage: where a review gate's edits are written until approved. Then the probe writes there,
        and ``dest`` is not touched: nothing is written, probed or deleted under it before a person
        approves. Its bucket is only looked up (a HEAD of the bucket); the gate's ``s3:PutObject`` on
        ``dest`` cannot be tested without writing, so the first approval tests it.
    :returns: what the probe learned about the store: whether it keeps conditional writes, and
        whether the connection may list the bucket.
    :raises BetterTokenConfigError: naming the connection and what to fix.
    :raises BetterTokenInputError: naming the bucket and what to fix.
    :raises BetterTokenStorageError: naming what S3 refused, the permission and the setting to fix.
    """
    # A connection that does not parse (its price table included) fails here with its own words.
    hook.check_config()
    ok, message = hook.test_connection()
    if not ok:
        raise BetterTokenConfigError(f"Preflight: the BetterToken connection does not work. {message}")
    try:
        if stage is None:
            return store.check_writable(dest)
        check = store.check_writable(stage)
        if dest.bucket != stage.bucket and store.io.bucket(dest.bucket) is BucketAccess.MISSING:
            raise BetterTokenInputError(
                f"the destination bucket {dest.bucket!r} does not exist, or connection "
                f"{store.io.conn_id!r} cannot see it; create the bucket or fix the dest prefix"
            )
        return check
    except (BetterTokenInputError, BetterTokenStorageError) as err:
        # The same error, said to come from the preflight; wrapping it would print the text twice.
        err.args = (f"Preflight: {err}", *err.args[1:])
        raise


class BetterTokenPreflightOperator(BaseOperator):
    """Fail once, before any paid call, when the connection or the destination is wrong.

    :class:`~airflow_bettertoken.operators.list_images.BetterTokenListImagesOperator` runs the same
    checks itself; use this operator in front of edits that you plan some other way.

    :param dest_prefix: ``s3://bucket/prefix/`` where the outputs go. (templated)
    :param s3_extra_args: what the edits add to every S3 write, with ``S3Hook``'s meaning, e.g.
        ``{"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "..."}``: the probe is written with
        them. (templated)
    :param bettertoken_conn_id: the BetterToken connection.
    :param aws_conn_id: the AWS connection for S3.
    """

    template_fields: Sequence[str] = ("dest_prefix", "s3_extra_args")

    def __init__(
        self,
        *,
        dest_prefix: str,
        s3_extra_args: dict[str, Any] | None = None,
        bettertoken_conn_id: str = BetterTokenHook.default_conn_name,
        aws_conn_id: str | None = "aws_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dest_prefix = dest_prefix
        self.s3_extra_args = s3_extra_args
        self.bettertoken_conn_id = bettertoken_conn_id
        self.aws_conn_id = aws_conn_id
        S3ExtraArgs.check_literal(s3_extra_args)

    @cached_property
    def hook(self) -> BetterTokenHook:
        return BetterTokenHook(self.bettertoken_conn_id)

    def execute(self, context: Context) -> dict[str, Any]:
        """Run the checks; returns what the probe learned about the store (see :class:`StoreCheck`)."""
        with fail_task_on_permanent_error():
            dest = parse_s3_prefix(self.dest_prefix, "dest_prefix")
            store = ImageStore(S3Hook(aws_conn_id=self.aws_conn_id), s3_extra_args=self.s3_extra_args)
            check = preflight(self.hook, store, dest)
        for warning in check.warnings:
            self.log.warning("Preflight: %s", warning)
        self.log.info(
            "Preflight passed: %s works and %s can be written", self.bettertoken_conn_id, self.dest_prefix
        )
        return check.dump()
