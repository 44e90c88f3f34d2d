"""Shared fixtures: a private Airflow home, the emulator and moto's S3 server on loopback."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.integration.s3_fault_proxy import S3FaultProxy

ROOT = Path(__file__).resolve().parent.parent
# Airflow reads its configuration when first imported, so this comes before any Airflow import.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="bettertoken-tests-airflow-")
atexit.register(shutil.rmtree, os.environ["AIRFLOW_HOME"], ignore_errors=True)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

from airflow_bettertoken.testing.sandbox import LocalSandbox  # noqa: E402

# Retries wait milliseconds in tests, and a claim whose holder died lapses in seconds; the policy itself
# is tested with an injected sleeper.
FAST_RETRIES = {"backoff_initial": 0.01, "backoff_max": 0.05, "claim_seconds": 6}


@pytest.fixture(scope="session")
def sandbox():
    with LocalSandbox(connection_extra=FAST_RETRIES) as box, box.connections():
        yield box


@pytest.fixture
def emulator(sandbox):
    """The emulator's control client, its ledger and fault queue cleared for this test."""
    control = sandbox.emulator.control
    control.reset()
    return control


@pytest.fixture
def api_key(sandbox) -> str:
    """The key the emulator accepts: random per session, and never allowed into any output."""
    return sandbox.api_key


@pytest.fixture(scope="session")
def s3(sandbox):
    return sandbox.s3_client()


@pytest.fixture
def buckets(s3):
    """A fresh input and output bucket for this test."""
    suffix = uuid.uuid4().hex[:10]
    names = SimpleNamespace(src=f"in-{suffix}", out=f"out-{suffix}")
    s3.create_bucket(Bucket=names.src)
    s3.create_bucket(Bucket=names.out)
    return names


@pytest.fixture
def connection(monkeypatch, sandbox):
    """Define an extra BetterToken connection for this test; returns its id."""

    def define(extra: dict | None = None, password: str | None = None, host: str | None = None) -> str:
        conn_id = f"bt_{uuid.uuid4().hex[:8]}"
        conn = {
            "conn_type": "bettertoken",
            "host": host or sandbox.emulator.base_url,
            "password": sandbox.api_key if password is None else password,
            "extra": {**FAST_RETRIES, **(extra or {})},
        }
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        return conn_id

    return define


class TaskInstanceStub(SimpleNamespace):
    """The part of a task instance the operators use: its identity, and XCom pushes (kept in ``xcoms``)."""

    def xcom_push(self, key: str, value) -> None:
        self.xcoms[key] = value


@pytest.fixture
def task_context():
    """The part of a task's context the operators read, for calling ``execute()`` directly."""
    ti = TaskInstanceStub(
        dag_id="test_dag", task_id="edit", run_id="manual__test", map_index=-1, try_number=1, xcoms={}
    )
    return {"ti": ti}


@pytest.fixture
def faulty_s3(sandbox, monkeypatch):
    """An AWS connection ``aws_faulty`` whose requests go through a proxy that counts them and can fail
    them as AWS does."""
    proxy = S3FaultProxy(sandbox.s3_endpoint).start()
    # The connection chooses its own retries (botocore's legacy mode, 3 attempts in all), which the
    # provider keeps as they are: they are the only retries of an S3 request.
    conn = sandbox.aws_connection(proxy.endpoint, config_kwargs={"retries": {"total_max_attempts": 3}})
    monkeypatch.setenv("AIRFLOW_CONN_AWS_FAULTY", json.dumps(conn))
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def airflow_db():
    """An initialised SQLite metadata database with the example DAGs in it, for dag.test() runs.

    The DAGs are serialized as a DAG processor would, which also marks their assets active: on
    Airflow 3.0, dag.test() alone leaves them inactive and a task with an asset outlet fails.
    """
    for command in (("db", "migrate"), ("dags", "reserialize")):
        subprocess.run([sys.executable, "-m", "airflow", *command], check=True, capture_output=True)


_FAULT_MATRIX: list[dict] = []
_CLUSTER_REPORT: list[str] = []


@pytest.fixture(scope="session")
def fault_matrix() -> list[dict]:
    """Where the fault matrix cases record themselves for the summary line."""
    return _FAULT_MATRIX


@pytest.fixture(scope="session")
def cluster_report():
    """Lines of figures from the cluster test, printed at the end of the session."""
    return _CLUSTER_REPORT.append


def pytest_terminal_summary(terminalreporter):
    for line in _CLUSTER_REPORT:
        terminalreporter.write_line(f"cluster: {line}")
    if not _FAULT_MATRIX:
        return
    passed = sum(case["passed"] for case in _FAULT_MATRIX)
    paid = sum(case["paid"] for case in _FAULT_MATRIX)
    expected = sum(case["expected"] for case in _FAULT_MATRIX)
    bad = sum(case["bad"] for case in _FAULT_MATRIX)
    terminalreporter.write_line(
        f"fault matrix: {len(_FAULT_MATRIX)} cases, {passed} passed; paid POSTs {paid} counted, "
        f"{expected} expected; objects lost or corrupt: {bad}"
    )


@pytest.fixture
def postgres_products(monkeypatch):
    """Make a ``products`` table of the sample products in PostgreSQL, in a schema of its own dropped
    after the test, and an Airflow connection whose queries find it as ``products``:
    ``postgres_products(image_prefix, count)`` returns the connection id, the schema and the rows.
    Skipped without PostgreSQL on 127.0.0.1:5432, a failure under ``CI=true``."""
    from airflow_bettertoken.testing.products import sample_products
    from tests.postgres import postgres_connection, products_schema, require_postgres

    require_postgres()
    with ExitStack() as stack:

        def define(image_prefix: str = "s3://bettertoken-in/products/images/", count: int = 20):
            rows = sample_products(image_prefix, count)
            schema = stack.enter_context(products_schema(rows))
            conn_id = f"pg_{uuid.uuid4().hex[:8]}"
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(postgres_connection(schema)))
            return SimpleNamespace(conn_id=conn_id, schema=schema, rows=rows)

        yield define
