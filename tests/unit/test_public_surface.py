"""``from airflow_bettertoken import ...``: every name a DAG author needs, loaded only when used."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import airflow_bettertoken
from airflow_bettertoken import exceptions

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_package_loads_neither_airflow_nor_any_of_its_modules():
    """Airflow's ProvidersManager imports the package for ``get_provider_info`` in light processes."""
    code = (
        "import sys, airflow_bettertoken, airflow_bettertoken.get_provider_info\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('airflow', 'airflow_bettertoken')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert loaded.strip() == "['airflow_bettertoken', 'airflow_bettertoken.get_provider_info']"


@pytest.mark.parametrize("name", [n for n in airflow_bettertoken.__all__ if n != "__version__"])
def test_each_public_name_is_the_object_its_module_defines(name):
    value = getattr(airflow_bettertoken, name)
    module = sys.modules[f"airflow_bettertoken.{airflow_bettertoken._HOMES[name]}"]
    assert value is getattr(module, name)
    assert name in dir(airflow_bettertoken)


def test_every_error_class_is_public():
    errors = {n for n in exceptions.__all__ if isinstance(getattr(exceptions, n), type)}
    assert errors <= set(airflow_bettertoken.__all__)
    assert set(airflow_bettertoken.__all__) - errors == {
        "__version__",
        "BetterTokenHook",
        "BetterTokenImageEditOperator",
        "BetterTokenListImagesOperator",
        "BetterTokenListRowsOperator",
        "BetterTokenManifestOperator",
        "BetterTokenNextChunkOperator",
        "BetterTokenResultsTableOperator",
        "BetterTokenReviewOperator",
        "SIZES",
        "catalog_backfill",
        "table_enrichment",
    }


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'BetterTokenOperator'"):
        airflow_bettertoken.BetterTokenOperator  # noqa: B018
    with pytest.raises(ImportError):
        from airflow_bettertoken import BetterTokenOperator  # noqa: F401


@pytest.mark.parametrize("path", sorted((ROOT / "dags").glob("*.py")), ids=lambda p: p.name)
def test_the_example_dags_import_only_the_public_surface(path):
    """At the top, only the package itself (a downstream DAG may import nothing of it); inside a task,
    also the sample data of ``airflow_bettertoken.testing``, which a set-up task loads when it runs."""

    def ours(nodes) -> set[str]:
        return {
            node.module
            for node in nodes
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("airflow_bettertoken")
        }

    tree = ast.parse(path.read_text())
    top, lazy = ours(tree.body), ours(ast.walk(tree)) - ours(tree.body)
    assert top <= {"airflow_bettertoken"}
    assert all(module.startswith("airflow_bettertoken.testing.") for module in lazy), lazy


def test_the_example_dags_make_demo_imports_bind_their_dag():
    """``make demo`` imports ``dag`` from these two files (scripts/demo.py)."""
    import runpy

    dags = Path(__file__).resolve().parents[2] / "dags"
    for name in ("bettertoken_backfill.py", "bettertoken_scheduled_edit.py"):
        assert runpy.run_path(str(dags / name))["dag"].dag_id == name.removesuffix(".py")
