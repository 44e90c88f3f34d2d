"""Every error survives pickling: executors and tools move them between processes."""

from __future__ import annotations

import pickle

import pytest

from airflow_bettertoken import exceptions
from airflow_bettertoken.exceptions import BetterTokenError, error_for_status


def _every_error() -> list[BetterTokenError]:
    errors: list[BetterTokenError] = [
        error_for_status(status, f"status {status}", retryable=status >= 500, code="c", attempts=3)
        for status in (400, 401, 403, 404, 418, 429, 503)
    ]
    errors.append(exceptions.BetterTokenTransportError("no answer", maybe_billed=True, attempts=2))
    errors.append(
        exceptions.BetterTokenStorageError(
            "S3 refused", operation="PutObject", uri="s3://b/k", status=503, code="SlowDown", retryable=True
        )
    )
    plain = [
        cls
        for cls in vars(exceptions).values()
        if isinstance(cls, type)
        and issubclass(cls, BetterTokenError)
        and not issubclass(
            cls,
            (
                exceptions.BetterTokenAPIError,
                exceptions.BetterTokenTransportError,
                exceptions.BetterTokenStorageError,
            ),
        )
    ]
    errors += [cls(f"a {cls.__name__}") for cls in plain]
    return errors


@pytest.mark.parametrize("error", _every_error(), ids=lambda e: type(e).__name__)
def test_every_error_survives_pickling(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__
    assert copy.retryable == error.retryable
