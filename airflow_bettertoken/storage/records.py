"""Small JSON records in S3, changed only with conditional writes: one writer wins, the loser decides again.

Delta Lake's S3 commit protocol and the lease pattern are the models: read the record and its
ETag, compute the new record from it, and write it with ``IfMatch`` (or ``IfNoneMatch="*"`` when
there was none). A 412 means another writer came first: read again and decide again, after a short
random wait taken from the store's :class:`~airflow_bettertoken.protocol.retry.Timing`, the same clock
and sleep as every other wait of the provider, so that tests run the rounds in virtual time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_bettertoken.exceptions import BetterTokenRecordConflictError, BetterTokenStorageError
from airflow_bettertoken.protocol.retry import Timing
from airflow_bettertoken.storage.locations import S3Location
from airflow_bettertoken.storage.s3_io import S3IO, Presence

if TYPE_CHECKING:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

__all__ = ["ConditionalRecord"]

# Rounds of read-decide-write before giving up: each lost round means another writer changed it.
_MAX_ROUNDS = 50
# The wait after a lost round, in seconds: random in [_ROUND_WAIT, 5 * _ROUND_WAIT), times the round
# (at most 10), so that writers who keep meeting spread out.
_ROUND_WAIT = 0.02


class ConditionalRecord:
    """One JSON object in S3, read with its ETag and written only if nobody changed it in between.

    Reads and writes go through :class:`~airflow_bettertoken.storage.s3_io.S3IO`: the writes carry the
    ``s3_extra_args``, and a 403 for a missing record (AWS's answer without ``s3:ListBucket``) reads as
    no record, which the create-only write then settles.

    :param extra_args: ``put_object`` arguments added to every write (e.g. server-side encryption).
    :param timing: the sleep and the jitter of the waits between rounds; tests pass virtual time.
    """

    def __init__(
        self,
        s3_hook: S3Hook,
        location: S3Location,
        *,
        extra_args: Mapping[str, Any] | None = None,
        timing: Timing | None = None,
    ) -> None:
        self.s3_hook = s3_hook
        self.location = location
        self.io = S3IO(s3_hook, extra_args, timing)
        self._known: tuple[dict[str, Any] | None, str | None] | None = None
        self._hidden = False

    def read(self) -> dict[str, Any] | None:
        """The record as S3 has it now (None if there is none); remembered for the next update.

        :raises BetterTokenStorageError: when S3 refused the read for another reason than a missing key.
        """
        found = self.io.get(self.location)
        self._hidden = found.presence is Presence.HIDDEN
        if not found.found:
            self._known = (None, None)
            return None
        document = json.loads(found.body or b"null")
        self._known = (document, found.etag)
        return document

    def update(
        self, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Apply ``change`` to the latest record and write the result; None from ``change`` writes nothing.

        ``change`` may run several times, each time on a fresher record, so it must be pure. It starts
        from the last record this object read or wrote; a conflict reads S3 again.

        :returns: the record as written (or as read, when ``change`` wrote nothing).
        :raises BetterTokenRecordConflictError: when others kept changing it for ``_MAX_ROUNDS`` rounds.
        :raises BetterTokenStorageError: when the record exists but S3 refuses to let it be read.
        """
        for round_number in range(_MAX_ROUNDS):
            if self._known is None:
                self.read()
            current, etag = self._known  # type: ignore[misc]
            new = change(current)
            if new is None:
                return current
            body = json.dumps(new, sort_keys=True).encode()
            try:
                result = self.io.put(
                    self.location,
                    body,
                    content_type="application/json",
                    if_match=etag,
                    if_none_match=not etag,
                )
            except BetterTokenStorageError as err:
                # 409: S3 saw two conditional writes at once; read again and decide again.
                if err.code != "ConditionalRequestConflict":
                    raise
                result = None
            if result is not None and result.written:
                self._known = (new, result.etag)
                return new
            if result is not None and self._hidden and not etag:
                # The record exists (the create-only write was refused), yet reading it was refused too.
                raise BetterTokenStorageError(
                    f"{self.location.uri} exists but connection {self.io.conn_id!r} may not read it: it "
                    f"needs s3:GetObject on arn:aws:s3:::{self.location.bucket}/{self.location.key}",
                    operation="GetObject",
                    uri=self.location.uri,
                    status=403,
                    code="AccessDenied",
                )
            # 412: another writer came first; or the version we matched was deleted meanwhile.
            self._known = None
            jitter = 1 + 4 * self.io.timing.random_fraction()
            self.io.timing.sleep(_ROUND_WAIT * jitter * min(round_number + 1, 10))
        raise BetterTokenRecordConflictError(
            f"{self.location.uri} kept changing under {_MAX_ROUNDS} attempts to write it"
        )
