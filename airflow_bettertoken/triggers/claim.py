"""Waiting in the triggerer for another task's claim on an output: no worker slot, and never a paid call.

A POST made in a trigger would be sent again after every triggerer restart (a restart cancels every
running trigger and starts it afresh), so the paid call stays on the worker; only the waiting moves
here. The trigger polls S3: the output object, and the claim in the output's spend ledger.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_bettertoken.storage.ledger import read_ledger
from airflow_bettertoken.storage.locations import S3Location, parse_s3_uri

__all__ = ["ClaimWaitTrigger"]


class ClaimWaitTrigger(BaseTrigger):
    """Fire once the output exists (``stored``), or the claim ``token`` is gone (``released``, ``lapsed``).

    :param output_uri: the output object waited for.
    :param token: the claim waited on; another claim in its place means the holder changed.
    :param aws_conn_id: the AWS connection of the task that waits.
    :param poll_seconds: seconds between looks at S3 (a HEAD and a GET each).
    """

    def __init__(
        self, output_uri: str, token: str, aws_conn_id: str | None, poll_seconds: float = 10.0
    ) -> None:
        super().__init__()
        self.output_uri = output_uri
        self.token = token
        self.aws_conn_id = aws_conn_id
        self.poll_seconds = poll_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "output_uri": self.output_uri,
                "token": self.token,
                "aws_conn_id": self.aws_conn_id,
                "poll_seconds": self.poll_seconds,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        output = parse_s3_uri(self.output_uri, "output")
        hook = S3Hook(aws_conn_id=self.aws_conn_id)
        while True:
            # boto3 blocks: the look runs in a thread, so the triggerer's loop stays free.
            state = await asyncio.to_thread(self._look, hook, output)
            if state is not None:
                yield TriggerEvent({"status": state, "output_uri": self.output_uri})
                return
            await asyncio.sleep(self.poll_seconds)

    def _look(self, hook: S3Hook, output: S3Location) -> str | None:
        if hook.head_object(output.key, output.bucket) is not None:
            return "stored"
        ledger = read_ledger(hook, output)
        claim = ledger.claim if ledger else None
        if claim is None or claim.token != self.token:
            return "released"
        return None if claim.live(time.time()) else "lapsed"
