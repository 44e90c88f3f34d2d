"""One log line per request to the emulator: what a user needs to see what was sent, and what failed.

It logs the method, path, status, latency and image count; never a header (the key is one) or a body.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("bettertoken.emulator")


class RequestLog:
    """ASGI middleware. It wraps ``send`` only: fault responses reach the connection through ``receive``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status: list[int] = []

        async def send_and_note_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            images = scope.get("state", {}).get("images", 0)  # set by the edit handler
            log.info(
                "%s %s %s %.0f ms images=%d",
                scope["method"],
                scope["path"],
                status[0] if status else "reset",
                (time.monotonic() - started) * 1000,
                images,
            )
