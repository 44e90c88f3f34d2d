"""An auth manager with per-DAG rights, for the gallery's tests: Airflow's simple one, plus a DAG list.

``alice`` may read only ``bettertoken_scheduled_edit``; everyone else is as the simple manager says.
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

DAGS_BY_USER = {"alice": {"bettertoken_scheduled_edit"}}


class PerDagAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, user: Any, details: Any = None, **kwargs: Any) -> bool:
        allowed = DAGS_BY_USER.get(user.get_name())
        if allowed is not None and (details is None or details.id not in allowed):
            return False
        return super().is_authorized_dag(user=user, details=details, **kwargs)
