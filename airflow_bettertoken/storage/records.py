"""Small JSON records in S3, changed only with conditional writes: one writer wins, the loser decides again.

Delta Lake's S3 commit protocol and the lease pattern are the models: read the record and its
ETag, compute the new record from it, and write it with ``IfMatch`` (or ``IfNoneMatch="*"`` when
there was none). A 412 means another writer came first: read again and decide again.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from airflow_bettertoken.storage.locations import S3Location

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

__all__ = ["ConditionalRecord", "RecordConflict", "status_of"]

# Rounds of read-decide-write before giving up: each lost round means another writer changed it.
_MAX_ROUNDS = 50


class RecordConflict(Exception):
    """The record changed under every one of many attempts to write it."""


def status_of(err: ClientError) -> int:
    return err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0


class ConditionalRecord:
    """One JSON object in S3, read with its ETag and written only if nobody changed it in between.

    :param extra_args: ``put_object`` arguments added to every write (e.g. server-side encryption).
    """

    def __init__(
        self,
        s3_hook: S3Hook,
        location: S3Location,
        *,
        extra_args: Mapping[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.s3_hook = s3_hook
        self.location = location
        self.extra_args = dict(extra_args or {})
        self._sleep = sleep
        self._known: tuple[dict[str, Any] | None, str | None] | None = None

    def read(self) -> dict[str, Any] | None:
        """The record as S3 has it now (None if there is none); remembered for the next update."""
        try:
            response = self.s3_hook.get_conn().get_object(Bucket=self.location.bucket, Key=self.location.key)
        except ClientError as err:
            if status_of(err) == 404:
                self._known = (None, None)
                return None
            raise
        document = json.loads(response["Body"].read())
        self._known = (document, response["ETag"])
        return document

    def update(
        self, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Apply ``change`` to the latest record and write the result; None from ``change`` writes nothing.

        ``change`` may run several times, each time on a fresher record, so it must be pure. It starts
        from the last record this object read or wrote; a conflict reads S3 again.

        :returns: the record as written (or as read, when ``change`` wrote nothing).
        :raises RecordConflict: when others kept changing the record for ``_MAX_ROUNDS`` rounds.
        """
        for round_number in range(_MAX_ROUNDS):
            if self._known is None:
                self.read()
            current, etag = self._known  # type: ignore[misc]
            new = change(current)
            if new is None:
                return current
            conditions = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                response = self.s3_hook.get_conn().put_object(
                    Bucket=self.location.bucket,
                    Key=self.location.key,
                    Body=json.dumps(new, sort_keys=True).encode(),
                    ContentType="application/json",
                    **conditions,
                    **self.extra_args,
                )
            except ClientError as err:
                # 412: another writer came first; 409: S3 saw two conditional writes at once;
                # 404 for an IfMatch write: someone deleted the record meanwhile.
                if status_of(err) not in (409, 412) and not (etag and status_of(err) == 404):
                    raise
                self._known = None
                self._sleep(random.uniform(0.02, 0.1) * min(round_number + 1, 10))
                continue
            self._known = (new, response["ETag"])
            return new
        raise RecordConflict(f"{self.location.uri} kept changing under {_MAX_ROUNDS} attempts to write it")
