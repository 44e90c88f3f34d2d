"""A local emulator of BetterToken's image edit API, for demos, tests and offline DAG tests."""

from __future__ import annotations

from airflow_bettertoken.emulator.app import EmulatorConfig, create_app
from airflow_bettertoken.emulator.sandbox import LocalSandbox
from airflow_bettertoken.emulator.server import EmulatorControl, EmulatorServer

__all__ = ["EmulatorConfig", "EmulatorControl", "EmulatorServer", "LocalSandbox", "create_app"]
