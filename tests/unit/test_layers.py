"""The package's layers: each imports only those below it, and the runtime loads no testing tools."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "airflow_bettertoken"

# What each part of the package may import from the package, and whether it may import Airflow.
# exceptions.py sits beneath every layer: its base class is Airflow's AirflowException.
ALLOWED = {
    "exceptions": ({"exceptions"}, True),
    "protocol": ({"exceptions", "protocol"}, False),
    "hooks": ({"exceptions", "protocol", "hooks", "get_provider_info", "__init__"}, True),
    "storage": ({"exceptions", "protocol", "storage"}, True),
    # The edit's steps send the paid call: on the worker, through the hook.
    "edits": ({"exceptions", "protocol", "hooks", "storage", "edits"}, True),
    # Triggers wait in the triggerer for what the operators defer; they never call the API, so they
    # import neither the hook nor the edit's steps (a triggerer restart re-runs every trigger).
    "triggers": ({"exceptions", "protocol", "storage", "triggers"}, True),
    "operators": ({"exceptions", "protocol", "hooks", "storage", "edits", "triggers", "operators"}, True),
    "plugins": (
        {"exceptions", "protocol", "hooks", "storage", "edits", "triggers", "operators", "plugins"},
        True,
    ),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _layer_files() -> list[tuple[str, Path]]:
    files = [("exceptions", PACKAGE / "exceptions.py")]
    for layer in ("protocol", "hooks", "storage", "edits", "triggers", "operators", "plugins"):
        files += [(layer, path) for path in sorted((PACKAGE / layer).glob("*.py"))]
    return files


@pytest.mark.parametrize(("layer", "path"), _layer_files(), ids=lambda v: getattr(v, "name", v))
def test_each_layer_imports_only_the_layers_below_it(layer, path):
    allowed, may_import_airflow = ALLOWED[layer]
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "airflow_bettertoken":
            part = parts[1] if len(parts) > 1 else "__init__"
            assert part in allowed, f"{path.name} ({layer}) imports {name}"
        if parts[0] == "airflow":
            assert may_import_airflow, f"{path.name} ({layer}) imports {name}"


def test_the_runtime_loads_no_testing_tools():
    """Importing the hook, the operators and the plugin, and parsing the example DAGs, loads no testing
    tool, and neither FastAPI nor Pillow: the gallery builds its app on its first request.

    Counted against what Airflow loads by itself to parse DAGs (Airflow 3.0's DagBag loads FastAPI).
    """
    code = """
import sys
import tempfile
from pathlib import Path
import tests.airflow_versions
plain = Path(tempfile.mkdtemp())
(plain / "plain.py").write_text("from airflow.sdk import DAG, Param; DAG('plain', params={'p': Param(1)})")
tests.airflow_versions.dagbag(plain)
before = set(sys.modules)
import airflow_bettertoken.hooks.bettertoken
import airflow_bettertoken.operators.image_edit
import airflow_bettertoken.operators.list_images
import airflow_bettertoken.operators.manifest
import airflow_bettertoken.plugins.gallery
assert tests.airflow_versions.unexpected_import_errors(tests.airflow_versions.dagbag()) == {}
added = set(sys.modules) - before
tools = ("fastapi", "uvicorn", "moto", "PIL", "starlette", "airflow_bettertoken.testing")
print(sorted(m for m in added if m.split(".")[0] in tools or m.startswith(tools[-1])))
"""
    env = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    "path", sorted((PACKAGE / "testing" / "emulator").glob("*.py")), ids=lambda path: path.name
)
def test_the_emulator_imports_nothing_from_the_client(path):
    """The emulator takes what the service accepts from its own table (service_spec.py), written from the
    service's page: if it imported the client's constants it could never disagree with the client."""
    client = {"protocol", "hooks", "storage", "edits", "triggers", "operators", "plugins", "exceptions"}
    for name in _imports(path):
        parts = name.split(".")
        assert not (parts[0] == "airflow_bettertoken" and len(parts) > 1 and parts[1] in client), (
            f"{path.name} imports {name}"
        )
