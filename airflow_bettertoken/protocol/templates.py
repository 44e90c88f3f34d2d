"""Whether an argument is a Jinja template, which Airflow renders just before the task runs.

Arguments known when the DAG is parsed are checked then, so a mistake fails the DAG once, not every
task; a template is checked when rendered.
"""

from __future__ import annotations

__all__ = ["is_template"]


def is_template(value: object) -> bool:
    """Text with ``{{ ... }}`` or ``{% ... %}`` in it."""
    return isinstance(value, str) and ("{{" in value or "{%" in value)
