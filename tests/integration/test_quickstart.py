"""The README's quick start, run as written in a real small deployment.

The commands are read from README.md's "Quick start" section, block by block, and run in a shell as
a user would: in a fresh home directory (``HOME`` is a temporary folder, so ``~/airflow`` is too), with
this venv's ``bin`` first on ``PATH``, as when it is activated. The servers of step 3 (the emulator,
moto and ``airflow standalone``: the API server, scheduler, DAG processor and triggerer, on SQLite)
run in the background, as in terminals of their own; the test waits for what the README tells the
user to wait for ("Airflow is ready", the DAG in ``airflow dags list``, the run's ``success``).

Three things differ from a user's machine, and only these:

- **The pip line is not run.** It installs from GitHub's constraints file, which CI cannot reach, and
  the running venv has the package and Airflow already. The test checks its form instead: the Airflow
  version is the one ``make test`` runs on (and this venv has), and the constraints URL is Airflow's.
- **The photo** (``mug.jpg``, "a photo of yours") is made by the test.
- **The API server's port**: Airflow's default 8080 is often taken on a shared machine, so the test
  gives Airflow a free one (``AIRFLOW__API__PORT``); no command names that port. The emulator's and
  moto's ports are in the commands, so they are used as written, and must be free.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import requests

from airflow_bettertoken.protocol.png import verify_png
from airflow_bettertoken.testing.samples import sample_image
from tests.ports import free_port, reachable

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
CONSTRAINTS_URL = (
    "https://raw.githubusercontent.com/apache/airflow/constraints-${AIRFLOW_VERSION}/"
    "constraints-${PYTHON_VERSION}.txt"
)
DAG_ID = "edit_one_image"


def quick_start() -> str:
    text = README.read_text()
    return text.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]


def blocks(section: str) -> list[tuple[str, str, str]]:
    """Each fenced block of the section: (language, code, the prose just before it)."""
    found, prose_start = [], 0
    for match in re.finditer(r"```(\w+)\n(.*?)```", section, re.S):
        found.append((match[1], match[2], section[prose_start : match.start()]))
        prose_start = match.end()
    return found


def makefile_airflow() -> str:
    return re.search(r"^AIRFLOW \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)[1]


def test_the_pip_line_installs_the_tested_airflow_with_airflows_constraints():
    [install] = [code for lang, code, _ in blocks(quick_start()) if "pip install" in code]
    assert f"AIRFLOW_VERSION={makefile_airflow()}\n" in install
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in install
    assert f'--constraint "{CONSTRAINTS_URL}"' in install
    # The Python version in the URL is the interpreter's own, major.minor, as Airflow's docs derive it.
    derive = re.search(r'PYTHON_VERSION="\$\((.*)\)"', install)[1]
    done = subprocess.run(["bash", "-c", derive], capture_output=True, text=True, check=True, env=_path_env())
    assert done.stdout.strip() == f"{sys.version_info.major}.{sys.version_info.minor}"


def _path_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


class Deployment:
    """The quick start's shell: a fresh home, the venv on PATH, no Airflow settings of the test run's."""

    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        self.cwd = tmp / "work"  # where the user runs the commands, with their photo
        self.home.mkdir()
        self.cwd.mkdir()
        self.api_port = free_port()
        self.env = {
            name: value for name, value in os.environ.items() if not name.startswith(("AIRFLOW", "PYTHON"))
        }
        self.env.update(
            HOME=str(self.home),
            PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
            AIRFLOW__API__PORT=str(self.api_port),
            AIRFLOW__API__BASE_URL=f"http://localhost:{self.api_port}",
        )
        self.servers: dict[str, subprocess.Popen] = {}
        self.log = tmp / "commands.log"

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    def start(self, command: str) -> None:
        name = command.split()[-1] if "airflow" in command else command.split()[0]
        out = open(self.log.parent / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        self.servers[name] = subprocess.Popen(
            ["bash", "-c", command],
            env=self.env,
            cwd=self.cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped whole, by id
        )

    def run(self, code: str) -> str:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", code],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )
        with open(self.log, "a") as log:
            log.write(f"$ {code}\n{done.stdout}\n{done.stderr}\n")
        assert done.returncode == 0, f"{code}\nexited {done.returncode}:\n{done.stderr[-3000:]}"
        return done.stdout

    def output(self, name: str) -> str:
        return (self.log.parent / f"{name}.log").read_text(errors="replace")

    def wait_for(self, what: str, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, process in self.servers.items():
                assert process.poll() is None, f"{name} exited: {self.output(name)[-3000:]}"
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout} s\n{self.output('standalone')[-3000:]}")
            time.sleep(0.5)

    def query(self, sql: str, *params: object) -> list[tuple]:
        database = self.airflow_home / "airflow.db"
        if not database.exists():
            return []
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
            try:
                return db.execute(sql, params).fetchall()
            except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
                return []

    def stop(self) -> None:
        for process in self.servers.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C in its terminal
        for process in self.servers.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def test_the_quick_start_edits_a_photo_in_a_real_deployment(tmp_path):
    import airflow

    if airflow.__version__ != makefile_airflow():
        pytest.skip(f"the quick start is written for Airflow {makefile_airflow()}, not {airflow.__version__}")
    for port in (8765, 9000):
        assert not reachable("127.0.0.1", port), f"port {port}, which the quick start uses, is taken"

    started = time.monotonic()
    deployment = Deployment(tmp_path)
    (deployment.cwd / "mug.jpg").write_bytes(sample_image(640, 480, "jpg"))
    steps = blocks(quick_start())
    try:
        for lang, code, prose in steps:
            if "pip install" in code:
                continue  # see test_the_pip_line_installs_the_tested_airflow_with_airflows_constraints
            if lang == "python":
                path = re.search(r"Save this as `~/([^`]+)`", prose)[1]
                (deployment.home / path).parent.mkdir(parents=True, exist_ok=True)
                (deployment.home / path).write_text(code)
            elif "airflow standalone" in code:
                for command in code.strip().splitlines():
                    deployment.start(command)
                deployment.wait_for(
                    "Airflow is ready", lambda: "Airflow is ready" in deployment.output("standalone"), 300
                )
            elif "airflow dags unpause" in code:
                deployment.wait_for("the DAG in dags list", partial(_dag_is_listed, deployment), 120)
                deployment.run(code)
                deployment.wait_for("the run's end", partial(_run_ended, deployment), 180)
                assert _run_states(deployment) == {"success"}, _task_log(deployment)
            else:
                deployment.run(code)

        png = verify_png((deployment.cwd / "mug-edited.png").read_bytes())
        assert (png.width, png.height) == (1024, 1024)
        stats = requests.get("http://127.0.0.1:8765/_emulator/stats", timeout=10).json()
        assert (stats["posts"], stats["paid"]) == (1, 1)
    finally:
        deployment.stop()
    print(f"the quick start took {time.monotonic() - started:.0f} s")


def _dag_is_listed(deployment: Deployment) -> bool:
    return bool(deployment.query("SELECT 1 FROM serialized_dag WHERE dag_id = ?", DAG_ID))


def _run_ended(deployment: Deployment) -> bool:
    return bool(_run_states(deployment) & {"success", "failed"})


def _run_states(deployment: Deployment) -> set[str]:
    return {row[0] for row in deployment.query("SELECT state FROM dag_run WHERE dag_id = ?", DAG_ID)}


def _task_log(deployment: Deployment) -> str:
    logs = sorted((deployment.airflow_home / "logs").rglob("*.log"))
    return "\n".join(path.read_text(errors="replace")[-2000:] for path in logs if DAG_ID in str(path))
