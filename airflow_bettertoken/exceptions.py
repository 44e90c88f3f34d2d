"""Every error this provider raises, under one base class.

``retryable`` says whether an Airflow task retry could help. The operator turns
errors that are not retryable into ``AirflowFailException``, so that no task
retry (and no second payment) is spent on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException

__all__ = [
    "BetterTokenAPIError",
    "BetterTokenAuthenticationError",
    "BetterTokenBadRequestError",
    "BetterTokenBudgetError",
    "BetterTokenClaimLostError",
    "BetterTokenConfigError",
    "BetterTokenError",
    "BetterTokenInputError",
    "BetterTokenNotFoundError",
    "BetterTokenOutputExistsError",
    "BetterTokenPermissionError",
    "BetterTokenRateLimitError",
    "BetterTokenRecordConflictError",
    "BetterTokenRecordError",
    "BetterTokenResponseError",
    "BetterTokenServerError",
    "BetterTokenSizeMismatchError",
    "BetterTokenSpendCapError",
    "BetterTokenStorageError",
    "BetterTokenTransportError",
    "BetterTokenUploadError",
    "error_for_status",
    "fail_task_on_permanent_error",
]


def _restore(cls: type[BetterTokenError], args: tuple[Any, ...], state: dict[str, Any]) -> BetterTokenError:
    error = Exception.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class BetterTokenError(AirflowException):
    """Base class of every error raised by airflow-bettertoken."""

    retryable = False

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields (status, attempts, ...) would break the default unpickling, which calls
        # cls(*args); errors cross process boundaries in executors and in ``pickle``-based tooling.
        return _restore, (type(self), self.args, self.__dict__)


class BetterTokenInputError(BetterTokenError):
    """Raised for bad input (prompt, size, sources, dest), before any paid call."""


class BetterTokenConfigError(BetterTokenError):
    """Raised when the connection is unknown or incomplete, before any paid call."""


class BetterTokenAPIError(BetterTokenError):
    """Raised when the API answers with an error status."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        request_id: str | None = None,
        attempts: int = 1,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.code = code
        self.request_id = request_id
        self.attempts = attempts


class BetterTokenBadRequestError(BetterTokenAPIError):
    """Raised on 400 and 422: the request itself was refused (fields, images, content policy)."""


class BetterTokenAuthenticationError(BetterTokenAPIError):
    """Raised on 401: the API key is missing, wrong or revoked."""


class BetterTokenPermissionError(BetterTokenAPIError):
    """Raised on 403: the key may not use this model or endpoint."""


class BetterTokenNotFoundError(BetterTokenAPIError):
    """Raised on 404: the base URL or the model is wrong."""


class BetterTokenRateLimitError(BetterTokenAPIError):
    """Raised on 429 once the retry budget is spent or the requested wait is too long."""


class BetterTokenServerError(BetterTokenAPIError):
    """Raised on 5xx once the retry budget is spent."""


class BetterTokenTransportError(BetterTokenError):
    """Raised when no answer arrived: the connection failed, was reset, or timed out."""

    retryable = True

    def __init__(self, message: str, *, maybe_billed: bool, attempts: int = 1) -> None:
        super().__init__(message)
        self.maybe_billed = maybe_billed
        self.attempts = attempts


class BetterTokenResponseError(BetterTokenError):
    """Raised when a success answer is malformed; the image was probably paid for, so it is not retried.

    ``evidence`` holds what came back (the decoded image, or the body), to be kept for the provider's
    support; ``request_id`` names the answer. Neither is ever logged.
    """

    evidence: bytes | bytearray | None = None
    request_id: str | None = None


class BetterTokenBudgetError(BetterTokenError):
    """Raised instead of a call when the image's budget of calls that may have been billed is spent,
    or when its run was stopped because edit after edit was cut."""


class BetterTokenSpendCapError(BetterTokenBudgetError):
    """Raised instead of a call when its run has used up the money it reserved under ``max_spend``, or
    when the records the cap is computed from cannot be read: the edit is blocked by budget.

    It is no failure of the edit itself: a chain plans it again once the cap is raised (see
    docs/spend.rst, "The cap"). No task retry is spent on it.
    """


class BetterTokenClaimLostError(BetterTokenError):
    """Raised instead of a call when this task's claim on the output lapsed and another task took it over."""


class BetterTokenOutputExistsError(BetterTokenError):
    """Raised when ``if_exists="fail"`` and the output object already exists."""


class BetterTokenSizeMismatchError(BetterTokenError):
    """Raised when ``on_size_mismatch="fail"`` and the image differs from the requested size."""


class BetterTokenStorageError(BetterTokenError):
    """Raised when S3 refused a request or could not be reached; the message names the permission or fix.

    ``retryable`` is True only for throttling, 5xx answers and connection errors, which waiting can heal.
    """

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        uri: str,
        status: int | None = None,
        code: str | None = None,
        botocore_class: str | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message)
        self.operation = operation
        self.uri = uri
        self.status = status
        self.code = code
        self.botocore_class = botocore_class
        self.retryable = retryable


class BetterTokenRecordConflictError(BetterTokenError):
    """Raised when a record in S3 (a ledger, a summary) kept changing under every attempt to write it.

    Other writers won each round; a task retry writes it again, so it is retryable.
    """

    retryable = True


class BetterTokenRecordError(BetterTokenError):
    """Raised when a record (in S3, or in XCom) cannot be read: the message names it and what is wrong.

    A record is never read as a default in its place: a ledger read as empty would pay again.
    """


class BetterTokenUploadError(BetterTokenError):
    """Raised when a paid image could not be written to S3; it is kept in the spill directory."""

    retryable = True


_ERRORS_BY_STATUS: dict[int, type[BetterTokenAPIError]] = {
    400: BetterTokenBadRequestError,
    401: BetterTokenAuthenticationError,
    403: BetterTokenPermissionError,
    404: BetterTokenNotFoundError,
    422: BetterTokenBadRequestError,
    429: BetterTokenRateLimitError,
}


def error_for_status(
    status: int,
    message: str,
    *,
    retryable: bool,
    code: str | None = None,
    request_id: str | None = None,
    attempts: int = 1,
) -> BetterTokenAPIError:
    """Build the exception for an error status; ``retryable`` comes from the retry policy."""
    cls = _ERRORS_BY_STATUS.get(status)
    if cls is None:
        cls = BetterTokenServerError if status >= 500 else BetterTokenAPIError
    return cls(
        message, status=status, code=code, request_id=request_id, attempts=attempts, retryable=retryable
    )


@contextmanager
def fail_task_on_permanent_error() -> Iterator[None]:
    """In an operator: turn errors that no retry can fix into ``AirflowFailException``.

    A task retry cannot fix them, and for a paid call it might pay again.
    """
    try:
        yield
    except BetterTokenError as err:
        if err.retryable:
            raise
        raise AirflowFailException(str(err)) from err
