"""Running a deferrable operator's ``execute`` the way Airflow does: trigger, event, resume."""

from __future__ import annotations

import asyncio
from typing import Any

from airflow.providers.common.compat.sdk import TaskDeferred


async def _first_event(trigger: Any) -> Any:
    async for event in trigger.run():
        return event
    raise AssertionError("the trigger ended without an event")


def execute_deferrable(operator: Any, context: dict[str, Any], deferrals: list[Any] | None = None) -> Any:
    """``operator.execute(context)``, running each trigger it defers to and resuming as told.

    :param deferrals: receives each trigger, for assertions on what was waited for.
    """
    method, kwargs = operator.execute, {}
    while True:
        try:
            return method(context, **kwargs)
        except TaskDeferred as deferred:
            if deferrals is not None:
                deferrals.append(deferred.trigger)
            event = asyncio.run(_first_event(deferred.trigger))
            method, kwargs = getattr(operator, deferred.method_name), {"event": event.payload}
