"""A real ``airflow api-server`` on loopback with the gallery plugin and three users, for the tests."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.ports import free_port, wait_for_port

#: alice may read only another DAG (per_dag_auth); reviewer may change DAGs, so answer their HITL tasks.
USERS = {"admin": "admin", "viewer": "viewer", "alice": "viewer", "reviewer": "user"}


class ApiServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.passwords = {user: secrets.token_urlsafe(12) for user in USERS}
        self.process: subprocess.Popen | None = None

    def start(self) -> ApiServer:
        passwords_file = self.workdir / "passwords.json"
        passwords_file.write_text(json.dumps(self.passwords))
        env = {
            **os.environ,
            "AIRFLOW__CORE__AUTH_MANAGER": "tests.integration.gallery.per_dag_auth.PerDagAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
            "AIRFLOW__API__BASE_URL": self.url,
            # One process, so one thumbnail cache (Airflow 3.0 starts 4 workers by default, 3.1+ one).
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
            # Airflow 3.0 signs tokens with no issuer unless one is set, and PyJWT 2.10+ refuses that.
            "AIRFLOW__API_AUTH__JWT_ISSUER": "airflow-bettertoken-tests",
            "PYTHONPATH": str(Path(__file__).resolve().parents[3]),
        }
        self.log = (self.workdir / "api-server.log").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self.port, self.process, "the API server", timeout=180)
        deadline = time.monotonic() + 60
        while requests.get(f"{self.url}/api/v2/monitor/health", timeout=10).status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("the API server did not become healthy")
            time.sleep(0.5)
        return self

    def token(self, user: str) -> str:
        answer = requests.post(
            f"{self.url}/auth/token", json={"username": user, "password": self.passwords[user]}, timeout=30
        )
        answer.raise_for_status()
        return answer.json()["access_token"]

    def stop(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
        self.log.close()
