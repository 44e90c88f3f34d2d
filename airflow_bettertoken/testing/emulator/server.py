"""Running the emulator: in a background thread for tests and demos, and a client for its controls."""

from __future__ import annotations

import threading
import time
from typing import Any

import requests
import uvicorn

from airflow_bettertoken.testing.emulator.app import EmulatorConfig, create_app


class EmulatorControl:
    """A client for the ``/_emulator`` endpoints of a running emulator, in this process or another."""

    def __init__(self, root_url: str) -> None:
        self.root_url = root_url.rstrip("/")

    def queue(self, *faults: dict[str, Any]) -> None:
        """Queue answers for the next edit POSTs, in order, e.g. ``{"status": 429, "headers": {...}}``,
        ``{"action": "reset"}``, ``{"action": "stall", "seconds": 5}`` or ``{"action": "truncate"}``."""
        requests.post(f"{self.root_url}/_emulator/faults", json=list(faults), timeout=10).raise_for_status()

    def configure(self, **changes: Any) -> None:
        """Change ``latency``, ``size_map``, ``api_key``, or the answers' token usage until the next
        reset: ``usage`` (reported exactly, e.g. ``{"input_tokens": 400, "input_tokens_details":
        {"text_tokens": 77, "image_tokens": 323}, "output_tokens": 4160, "total_tokens": 4560}``),
        ``output_tokens`` by size (``{"1024x1024": 4160}``) or ``send_usage=False`` (no usage at all)."""
        requests.post(f"{self.root_url}/_emulator/config", json=changes, timeout=10).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = requests.get(f"{self.root_url}/_emulator/stats", timeout=10)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        requests.post(f"{self.root_url}/_emulator/reset", timeout=10).raise_for_status()


class EmulatorServer:
    """The emulator served by uvicorn on a background thread; ``port=0`` picks a free port.

    >>> with EmulatorServer() as emulator:
    ...     emulator.base_url  # 'http://127.0.0.1:PORT/v1', the connection's host
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, config: EmulatorConfig | None = None) -> None:
        self._server = uvicorn.Server(
            uvicorn.Config(create_app(config), host=host, port=port, log_level="warning", lifespan="off")
        )
        self._thread: threading.Thread | None = None
        self.host = host
        self.port = port

    def start(self) -> EmulatorServer:
        self._thread = threading.Thread(target=self._server.run, name="bettertoken-emulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    @property
    def control(self) -> EmulatorControl:
        return EmulatorControl(self.root_url)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
