"""Where human-in-the-loop tasks come from, on the minors that have them.

``HITLOperator`` is in the standard provider and needs Airflow 3.1 or later: on 3.0 importing it raises
an error that names 3.1. This is the one place that knows, so the review gate can say so when a DAG
that uses it is parsed.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.compat.sdk import BaseOperator

__all__ = ["HAS_HITL", "HITL_MISSING", "HITLBase"]

try:  # Airflow 3.1+ (the standard provider's human-in-the-loop operators)
    from airflow.providers.standard.operators.hitl import HITLOperator as _HITLOperator
except Exception as err:  # 3.0: AirflowOptionalProviderFeatureException ("needs Airflow 3.1+")
    HAS_HITL = False
    HITL_MISSING = f"{type(err).__name__}: {err}"
    HITLBase: Any = BaseOperator
else:
    HAS_HITL = True
    HITL_MISSING = ""
    HITLBase = _HITLOperator
