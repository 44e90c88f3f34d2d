"""A local sandbox for offline DAG runs: the emulator and a moto S3 server, both on loopback.

>>> with LocalSandbox() as sandbox, sandbox.connections():
...     dag.test()   # bettertoken_default and aws_default now point at the sandbox

moto comes with the ``dev`` extra (``pip install airflow-bettertoken[dev]``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow_bettertoken.testing.emulator.app import EmulatorConfig
from airflow_bettertoken.testing.emulator.server import EmulatorServer


class LocalSandbox:
    """The emulator and moto's S3 server, with the Airflow connections that reach them.

    :param connection_extra: extra for the BetterToken connection, e.g. faster retries for tests.
    :param emulator_config: how the emulator behaves; its API key is made up at random when unset.
    """

    def __init__(
        self,
        connection_extra: dict[str, Any] | None = None,
        emulator_config: EmulatorConfig | None = None,
    ) -> None:
        # A fresh random key each time: no key, not even a test one, is ever written down.
        config = emulator_config or EmulatorConfig()
        self.api_key = config.api_key or f"sk-local-{secrets.token_hex(12)}"
        self.emulator = EmulatorServer(config=dataclasses.replace(config, api_key=self.api_key))
        self.connection_extra = connection_extra or {}
        self._moto: Any = None

    def start(self) -> LocalSandbox:
        from moto.server import ThreadedMotoServer

        self.emulator.start()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request access log
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        return self

    def stop(self) -> None:
        if self._moto is not None:
            self._moto.stop()
        self.emulator.stop()

    @property
    def s3_endpoint(self) -> str:
        host, port = self._moto.get_host_and_port()
        return f"http://{host}:{port}"

    def connection_env(self, base_url: str | None = None, api_key: str | None = None) -> dict[str, str]:
        """``AIRFLOW_CONN_*`` variables for ``bettertoken_default`` and ``aws_default``.

        :param base_url: a real service's base URL instead of the emulator's.
        :param api_key: the real service's key; both default to the emulator.
        """
        bettertoken = {
            "conn_type": "bettertoken",
            "host": base_url or self.emulator.base_url,
            "password": api_key or self.api_key,
            "extra": self.connection_extra,
        }
        return {
            "AIRFLOW_CONN_BETTERTOKEN_DEFAULT": json.dumps(bettertoken),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(self.aws_connection()),
        }

    def aws_connection(self, endpoint_url: str | None = None, **extra: Any) -> dict[str, Any]:
        """The AWS connection to the sandbox's S3, or to ``endpoint_url`` in front of it."""
        return {
            "conn_type": "aws",
            "login": "sandbox",
            "password": "sandbox-secret",
            "extra": {"endpoint_url": endpoint_url or self.s3_endpoint, "region_name": "us-east-1", **extra},
        }

    def s3_client(self) -> Any:
        """A boto3 S3 client on the sandbox's S3, made by the Amazon provider, to seed and inspect it."""
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        with self.connections():
            return S3Hook(aws_conn_id="aws_default").get_conn()

    @contextmanager
    def connections(self, base_url: str | None = None, api_key: str | None = None) -> Iterator[None]:
        """Set the connection variables in this process for the duration of the block."""
        env = self.connection_env(base_url, api_key)
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def __enter__(self) -> LocalSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def return_values(dag_id: str, run_id: str, task_id: str) -> list[Any]:
    """The XCom return values of a task in a local run (``dag.test()``), in map index order.

    Reads the metadata database directly, so it serves local runs and tests, not tasks.
    """
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    query = XComModel.get_many(run_id=run_id, key="return_value", task_ids=task_id, dag_ids=dag_id)
    with create_session() as session:
        rows = session.scalars(query.order_by(None).order_by(XComModel.map_index)).all()
        return [XComModel.deserialize_value(row) for row in rows]
