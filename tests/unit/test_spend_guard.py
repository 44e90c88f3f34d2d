"""The hook's SpendGuard protocol says what the hook passes, and the spend ledger takes exactly that."""

from __future__ import annotations

import inspect

import pytest

from airflow_bettertoken.protocol.spend import SpendGuard
from airflow_bettertoken.storage.ledger import SpendLedger


@pytest.mark.parametrize("method", ["before_send", "after_call"])
def test_the_ledger_takes_what_the_guard_protocol_declares(method):
    declared = inspect.signature(getattr(SpendGuard, method)).parameters
    taken = inspect.signature(getattr(SpendLedger, method)).parameters
    assert [(p.name, p.kind, p.default) for p in declared.values()] == [
        (p.name, p.kind, p.default) for p in taken.values()
    ]


def test_after_call_declares_whether_the_call_was_sent():
    """The hook tells the guard that a call whose connection failed was never sent: no POST, no bill."""
    assert inspect.signature(SpendGuard.after_call).parameters["sent"].default is True
