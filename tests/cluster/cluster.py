"""A real Airflow 3 cluster on this machine: PostgreSQL, Redis, the API server, the scheduler,
the DAG processor, the triggerer and two Celery workers, with the emulator (behind a real nginx,
as a gateway would be) and moto's S3 server as stubs.

Every process gets its own process group, so that one worker can be killed whole and every
process can be stopped by id, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg2

from tests.nginx import Nginx
from tests.ports import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS = ("127.0.0.1", 6379)
REDIS_DB = 11  # a database of its own, emptied before the cluster starts
EMULATOR_LATENCY = 2.0
WORKER_CONCURRENCY = 4
# A gateway that lets every edit through, as one whose timeout is set right; run 5 shortens it.
GATEWAY_TIMEOUT = 60


@dataclass
class Cluster:
    logs: Path
    database: str = field(default_factory=lambda: f"bettertoken_cluster_{secrets.token_hex(4)}")
    api_key: str = field(default_factory=lambda: f"sk-cluster-{secrets.token_hex(12)}", repr=False)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    commands: dict[str, tuple[tuple[str, ...], dict[str, str]]] = field(default_factory=dict)
    peak_memory: dict[str, int] = field(default_factory=dict)
    gateway: Nginx | None = None

    def start(self) -> None:
        self.home = self.logs / "airflow-home"
        self.home.mkdir(parents=True)
        self._create_database()
        self._flush_redis()
        self.emulator_port, self.s3_port, self.api_port = free_port(), free_port(), free_port()
        self.gateway = Nginx(self.emulator_port, read_timeout=GATEWAY_TIMEOUT).__enter__()
        self.env = self._environment()
        self._spawn(
            "emulator",
            "-m", "airflow_bettertoken.testing.emulator",
            "--port", str(self.emulator_port), "--latency", str(EMULATOR_LATENCY),
            env={"BETTERTOKEN_EMULATOR_API_KEY": self.api_key},
        )  # fmt: skip
        self._spawn("s3", "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port))
        self.airflow("db", "migrate")
        self.airflow(
            "pools", "set", "bettertoken", str(2 * WORKER_CONCURRENCY), "BetterToken paid image edits"
        )
        self._spawn(
            "api-server", "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(self.api_port)
        )
        self._spawn("scheduler", "-m", "airflow", "scheduler")
        self._spawn("dag-processor", "-m", "airflow", "dag-processor")
        self._spawn("triggerer", "-m", "airflow", "triggerer")
        for number in (1, 2):
            name = f"worker{number}"
            self._spawn(
                name,
                "-m", "airflow", "celery", "worker",
                "--concurrency", str(WORKER_CONCURRENCY), "--celery-hostname", f"{name}@%h",
                env={"BETTERTOKEN_WORKER_NAME": name},
            )  # fmt: skip
        wait_for_port(self.emulator_port, self.processes["emulator"], "the emulator")
        wait_for_port(self.s3_port, self.processes["s3"], "the S3 server")
        wait_for_port(self.api_port, self.processes["api-server"], "the API server", timeout=180)

    def _environment(self) -> dict[str, str]:
        database = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.database}"
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__PARALLELISM": "32",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.cluster.hostname.worker_name",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.api_port}",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://{REDIS[0]}:{REDIS[1]}/{REDIS_DB}",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://postgres@127.0.0.1:5432/{self.database}",
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "3600",
            # A task whose worker died is noticed within seconds, not minutes.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "90",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs / "task-logs"),
            "AIRFLOW_CONN_BETTERTOKEN_DEFAULT": json.dumps(
                {
                    "conn_type": "bettertoken",
                    "host": f"{self.gateway.url}/v1",
                    "password": self.api_key,
                    "extra": {"backoff_initial": 0.5},
                }
            ),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                {
                    "conn_type": "aws",
                    "login": "cluster",
                    "password": "cluster-secret",
                    "extra": {"endpoint_url": f"http://127.0.0.1:{self.s3_port}", "region_name": "us-east-1"},
                }
            ),
        }

    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.commands[name] = (args, env or {})
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed when the process is reaped)
        self.processes[name] = subprocess.Popen(
            [sys.executable, *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed whole, stopped by id
            cwd=self.logs,
        )

    def airflow(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "airflow", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.logs,
        )
        with open(self.logs / "cli.log", "a") as log:
            log.write(f"$ airflow {' '.join(args)}\n{done.stdout}\n{done.stderr}\n")
        if done.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed: {done.stderr[-1500:]}")
        return done.stdout

    def query(self, sql: str, *params: object) -> list[tuple]:
        with psycopg2.connect(dbname=self.database, **PG) as conn, conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not self.query("SELECT 1 FROM serialized_dag WHERE dag_id = %s", dag_id):
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} was not parsed within {timeout} s")
            time.sleep(1)

    def trigger(self, dag_id: str, run_id: str, conf: dict, logical_date: str | None = None) -> None:
        date = ("--logical-date", logical_date) if logical_date else ()
        self.airflow("dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf), *date)

    def restart(self, name: str) -> None:
        """Stop a component gracefully (SIGTERM, as a deploy does) and start it again."""
        process = self.processes[name]
        self._signal(process, signal.SIGTERM)
        process.wait(timeout=60)
        args, env = self.commands[name]
        self._spawn(name, *args, env=env)

    def restart_gateway(self, read_timeout: float) -> None:
        """The gateway again, on the same port, with another read timeout."""
        port = self.gateway.port
        self.gateway.__exit__()
        self.gateway = Nginx(self.emulator_port, read_timeout=read_timeout, port=port).__enter__()

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float, on_tick=None) -> str:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.query("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
            state = rows[0][0] if rows else None
            if state in ("success", "failed"):
                return state
            self.sample_memory()
            if on_tick is not None:
                on_tick()
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {state} after {timeout} s")
            time.sleep(0.5)

    def task_instances(self, dag_id: str, run_id: str, task_id: str) -> list[tuple]:
        return self.query(
            "SELECT map_index, state, hostname, try_number FROM task_instance"
            " WHERE dag_id = %s AND run_id = %s AND task_id = %s ORDER BY map_index",
            dag_id,
            run_id,
            task_id,
        )

    def sample_memory(self) -> None:
        """Track each worker's peak memory: the PSS of its whole process tree (Celery children and
        task processes included), so that pages the forked processes share count once."""
        for name in ("worker1", "worker2"):
            process = self.processes.get(name)
            if process is None or process.poll() is not None:
                continue
            try:
                tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
                rss = sum(p.memory_full_info().pss for p in tree if p.is_running())
            except psutil.Error:
                continue
            self.peak_memory[name] = max(self.peak_memory.get(name, 0), rss)

    def kill(self, name: str) -> None:
        """SIGKILL a component and everything it started, as when its machine dies.

        Airflow 3 runs each task in a process group of its own, so killing the component's group
        alone would leave its tasks running on, unsupervised. The group is stopped first, so that
        nothing new is forked while the tree is read, then every group in the tree is killed.
        """
        root = self.processes[name]
        os.killpg(root.pid, signal.SIGSTOP)
        tree = [psutil.Process(root.pid), *psutil.Process(root.pid).children(recursive=True)]
        groups = set()
        for process in tree:
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(process.pid))
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        root.wait(timeout=30)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if name != "worker1" and process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode}; see {self.logs / (name + '.log')}"
                )

    def stop(self) -> None:
        for process in self.processes.values():
            self._signal(process, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                self._signal(process, signal.SIGKILL)
                process.wait(timeout=10)
        if self.gateway is not None:
            self.gateway.__exit__()
        self._drop_database()

    @staticmethod
    def _signal(process: subprocess.Popen, signum: int) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)

    def _create_database(self) -> None:
        self._admin(f'CREATE DATABASE "{self.database}"')

    def _drop_database(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    @staticmethod
    def _admin(sql: str) -> None:
        """Run a statement outside a transaction, as CREATE and DROP DATABASE need."""
        conn = psycopg2.connect(dbname="postgres", **PG)
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    def _flush_redis(self) -> None:
        import redis

        redis.Redis(host=REDIS[0], port=REDIS[1], db=REDIS_DB).flushdb()
