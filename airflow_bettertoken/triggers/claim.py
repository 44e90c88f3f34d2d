"""Waiting in the triggerer for another task's claim on an output: no worker slot, and never a paid call.

A POST made in a trigger would be sent again after every triggerer restart (a restart cancels every
running trigger and starts it afresh), so the paid call stays on the worker; only the waiting moves
here. The trigger polls S3 through the provider's store (:class:`~airflow_bettertoken.storage.s3_io.S3IO`),
as the edit itself reads: the output object, and the claim in the output's spend ledger, with the edit's
read arguments (``RequestPayer``, ``ExpectedBucketOwner``). A 403 on the output (AWS's answer for a
missing key without ``s3:ListBucket``) is not taken for "stored": the ledger decides. Any other failure,
after botocore's retries, fails the trigger with the explained error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_bettertoken.storage.ledger import read_ledger
from airflow_bettertoken.storage.locations import S3Location, parse_s3_uri
from airflow_bettertoken.storage.s3_io import S3IO

__all__ = ["ClaimWaitTrigger"]


class ClaimWaitTrigger(BaseTrigger):
    """Fire once the output exists (``stored``), or the claim ``token`` is gone (``released``, ``lapsed``).

    :param output_uri: the output object waited for.
    :param token: the claim waited on; another claim in its place means the holder changed.
    :param aws_conn_id: the AWS connection of the task that waits.
    :param s3_extra_args: the task's ``s3_extra_args``; the reads carry ``RequestPayer`` and
        ``ExpectedBucketOwner`` from them.
    :param poll_seconds: seconds between looks at S3 (a HEAD and a GET each).
    """

    def __init__(
        self,
        output_uri: str,
        token: str,
        aws_conn_id: str | None,
        poll_seconds: float = 10.0,
        s3_extra_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.output_uri = output_uri
        self.token = token
        self.aws_conn_id = aws_conn_id
        self.poll_seconds = poll_seconds
        self.s3_extra_args = dict(s3_extra_args or {})

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "output_uri": self.output_uri,
                "token": self.token,
                "aws_conn_id": self.aws_conn_id,
                "poll_seconds": self.poll_seconds,
                "s3_extra_args": self.s3_extra_args,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        output = parse_s3_uri(self.output_uri, "output")
        store = S3IO(S3Hook(aws_conn_id=self.aws_conn_id), self.s3_extra_args)
        while True:
            # boto3 blocks: the look runs in a thread, so the triggerer's loop stays free.
            state = await asyncio.to_thread(self._look, store, output)
            if state is not None:
                yield TriggerEvent({"status": state, "output_uri": self.output_uri})
                return
            await asyncio.sleep(self.poll_seconds)

    def _look(self, store: S3IO, output: S3Location) -> str | None:
        """``stored``, ``released``, ``lapsed``, or None to look again later."""
        if store.head(output).found:
            return "stored"
        ledger = read_ledger(store.s3_hook, output, extra_args=self.s3_extra_args)
        claim = ledger.claim if ledger else None
        if claim is None or claim.token != self.token:
            return "released"
        return None if claim.live(time.time()) else "lapsed"
