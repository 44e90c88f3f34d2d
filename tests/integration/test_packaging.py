"""The wheel as users check it: the license its metadata declares, and the changelog, are inside."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from airflow_bettertoken import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_apache_license_and_the_changelog(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    [wheel] = tmp_path.glob("airflow_bettertoken-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = f"airflow_bettertoken-{__version__}.dist-info"
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        license_text = archive.read(f"{dist_info}/licenses/LICENSE").decode()
        changelog = archive.read("airflow_bettertoken/CHANGELOG.rst").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata
    assert license_text == (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "TERMS AND CONDITIONS" in license_text
    assert f"\n{__version__}\n" in changelog
    assert "airflow_bettertoken/testing/emulator/service_spec.py" in names
    # The repository's root CHANGELOG.rst is the same file.
    assert (ROOT / "CHANGELOG.rst").read_text() == changelog
