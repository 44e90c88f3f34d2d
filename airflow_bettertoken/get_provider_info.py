"""Provider metadata that Airflow's ProvidersManager reads through the entry point.

This module imports nothing heavy: Airflow loads it for every provider at start-up.
"""

from __future__ import annotations

from airflow_bettertoken import __version__

CONNECTION_TYPE = "bettertoken"

# The connection form: one source, read by both the provider info and the hook.
UI_FIELD_BEHAVIOUR = {
    "hidden-fields": ["schema", "port", "login"],
    "relabeling": {"host": "Base URL", "password": "API Key"},
    "placeholders": {
        "host": "https://www.bettertoken.ai/v1",
        "password": "your BetterToken API key",
        "extra": '{"timeout": 900, "connect_timeout": 10, "max_attempts": 4}',
    },
}


def get_provider_info() -> dict:
    return {
        "package-name": "airflow-bettertoken",
        "name": "BetterToken",
        "description": "Edit images stored in S3 with BetterToken's gpt-image-2 image edit API.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "BetterToken",
                "external-doc-url": "https://docs.bettertoken.ai",
                "tags": ["software"],
            }
        ],
        "hooks": [
            {
                "integration-name": "BetterToken",
                "python-modules": ["airflow_bettertoken.hooks.bettertoken"],
            }
        ],
        "operators": [
            {
                "integration-name": "BetterToken",
                "python-modules": ["airflow_bettertoken.operators.image_edit"],
            }
        ],
        "triggers": [
            {
                "integration-name": "BetterToken",
                "python-modules": ["airflow_bettertoken.triggers.claim"],
            }
        ],
        "extra-links": [
            "airflow_bettertoken.operators._links.OutputImageLink",
            "airflow_bettertoken.operators._links.SourceImagesLink",
        ],
        "connection-types": [
            {
                "hook-class-name": "airflow_bettertoken.hooks.bettertoken.BetterTokenHook",
                "hook-name": "BetterToken",
                "connection-type": CONNECTION_TYPE,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
            }
        ],
    }
