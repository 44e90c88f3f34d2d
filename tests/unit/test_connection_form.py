"""The connection form passes Airflow's own checks, on the minor this runs on.

Airflow 3.0 and 3.1 read the form from ``BetterTokenHook.get_ui_field_behaviour()`` (only when wtforms
is installed, as the FAB provider does); 3.2 and later from the provider info. Either way Airflow
validates it with its ``customized_form_field_behaviours`` schema and drops a form that fails, so the
connection page loses its labels: these tests use that validator and ProvidersManager itself, not a
copy of the schema.
"""

from __future__ import annotations

from airflow import providers_manager
from airflow.providers_manager import ProvidersManager

from airflow_bettertoken.get_provider_info import CONNECTION_TYPE
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook

EXPECTED = {
    "hidden_fields": ["schema", "port", "login"],
    "relabeling": {"host": "Base URL", "password": "API Key"},
}


def test_the_hooks_form_passes_airflows_schema():
    validator = providers_manager._create_customized_form_field_behaviours_schema_validator()
    behaviour = BetterTokenHook.get_ui_field_behaviour()

    assert list(validator.iter_errors(behaviour)) == []
    assert {key: behaviour[key] for key in EXPECTED} == EXPECTED


def test_a_form_in_the_provider_infos_spelling_is_what_airflow_rejects():
    """The test above can fail: the spelling this hook once returned fails the same validator."""
    validator = providers_manager._create_customized_form_field_behaviours_schema_validator()
    old = {"hidden-fields": ["schema"], "relabeling": {"host": "Base URL"}}

    errors = [error.message for error in validator.iter_errors(old)]
    assert errors == ["'hidden_fields' is a required property"]


def test_airflow_loads_the_form_with_its_labels():
    behaviour = ProvidersManager().field_behaviours[CONNECTION_TYPE]

    assert behaviour["hidden_fields"] == EXPECTED["hidden_fields"]
    assert behaviour["relabeling"] == EXPECTED["relabeling"]
    # Airflow prefixes the placeholder of an extra field with the connection type, not host's.
    assert behaviour["placeholders"]["host"] == "https://www.bettertoken.ai/v1"
