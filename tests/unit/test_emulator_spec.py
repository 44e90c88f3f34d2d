"""The client against the emulator's own table of what the service's page allows.

The emulator's table (``testing/emulator/service_spec.py``) is written from BetterToken's page, apart
from the client's ``protocol/wire.py``; these tests are where the two must agree, so that a change to
either one that the service would not accept fails here.
"""

from __future__ import annotations

from airflow_bettertoken.protocol import wire
from airflow_bettertoken.testing.emulator import service_spec
from airflow_bettertoken.testing.samples import sample_image


def test_the_client_offers_exactly_the_sizes_the_page_lists():
    assert wire.SIZES == service_spec.SIZES
    assert wire.MODEL == service_spec.MODEL


def test_every_field_the_client_sends_is_on_the_page_with_an_allowed_value():
    request = wire.build_edit_request("p", [sample_image(8, 8)], "2048x1152")
    for name, value in request.form_fields():
        allowed, _default = service_spec.FIELDS[name]
        assert allowed is None or value in allowed, (name, value)
    assert {name for name, _ in request.form_files()} <= set(service_spec.FILE_FIELDS)


def test_the_fields_a_gateway_may_be_spared_are_fields_the_page_lists():
    assert set(wire.OMITTABLE_FIELDS) <= set(service_spec.FIELDS) - {"model", "prompt"}


def test_the_limits_agree():
    assert (wire.MAX_IMAGES, wire.MAX_IMAGE_BYTES, wire.MAX_PROMPT_CHARS) == (
        service_spec.MAX_IMAGES,
        service_spec.MAX_IMAGE_BYTES,
        service_spec.MAX_PROMPT_CHARS,
    )
    assert set(wire.IMAGE_TYPES) == set(service_spec.IMAGE_TYPES)
