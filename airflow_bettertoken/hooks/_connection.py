"""What the hook reads from its Airflow connection, checked, and what to tell a user who must fix it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_bettertoken.exceptions import BetterTokenConfigError
from airflow_bettertoken.protocol.png import DEFAULT_MAX_PIXELS
from airflow_bettertoken.protocol.price import PRICES_EXTRA, PriceTable, price_table_of
from airflow_bettertoken.protocol.retry import RetryPolicy
from airflow_bettertoken.protocol.spend import (
    DEFAULT_CLAIM_SECONDS,
    DEFAULT_MAX_BILLED_CALLS,
    SpendPolicy,
    check_max_billed_calls,
)
from airflow_bettertoken.protocol.wire import DEFAULT_BASE_URL, OMITTABLE_FIELDS

DEFAULT_TIMEOUT = 900.0
DEFAULT_CONNECT_TIMEOUT = 10.0
# The spend policy's extras: protocol/spend.SpendPolicy.
_SPEND_EXTRAS = ("max_billed_calls", "claim_seconds")
# The extras of the hook itself; the retry policy's fields are known too.
_HOOK_EXTRAS = (
    "timeout",
    "connect_timeout",
    "verify",
    "proxies",
    "max_pixels",
    "omit_fields",
    PRICES_EXTRA,
    *_SPEND_EXTRAS,
)


@dataclass(frozen=True)
class ConnectionSettings:
    """The connection's fields, checked."""

    conn_id: str
    base_url: str
    api_key: str = field(repr=False)
    timeout: float
    connect_timeout: float
    verify: bool | str
    proxies: dict[str, str]
    retry_policy: RetryPolicy
    max_pixels: int
    spend_policy: SpendPolicy
    #: Form fields left out of each edit request, for servers that refuse them.
    omit_fields: frozenset[str] = frozenset()
    #: The price table (extra ``prices``); None without one, and then reports stay in calls and tokens.
    prices: PriceTable | None = None


def read_settings(
    conn: Any, conn_id: str, api_retry: Mapping[str, Any], log: logging.Logger
) -> ConnectionSettings:
    """Check an Airflow Connection's fields; every problem is a :class:`BetterTokenConfigError`."""
    api_key = conn.password or ""
    if not api_key.strip():
        raise BetterTokenConfigError(
            f"connection {conn_id!r} has no API key; put it in the password field ('API Key' in the UI)"
        )
    base_url = (conn.host or DEFAULT_BASE_URL).rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise BetterTokenConfigError(
            f"connection {conn_id!r} host must be a base URL starting with "
            f"https:// (or http:// for a local emulator), such as {DEFAULT_BASE_URL}"
        )
    extra = conn.extra_dejson
    known = sorted({*_HOOK_EXTRAS, *RetryPolicy.field_names()})
    unknown = sorted(set(extra) - set(known))
    if unknown:
        log.warning("Connection %r: unknown extra %s ignored; known extras: %s", conn_id, unknown, known)
    proxies = extra.get("proxies") or {}
    if not isinstance(proxies, dict):
        raise BetterTokenConfigError(
            f"connection {conn_id!r} extra 'proxies' must be a mapping of scheme to proxy URL"
        )
    return ConnectionSettings(
        conn_id=conn_id,
        base_url=base_url,
        api_key=api_key,
        timeout=_positive(extra, "timeout", DEFAULT_TIMEOUT, conn_id),
        connect_timeout=_positive(extra, "connect_timeout", DEFAULT_CONNECT_TIMEOUT, conn_id),
        verify=extra.get("verify", True),
        proxies=proxies,
        retry_policy=RetryPolicy().with_options(extra).with_options(api_retry),
        max_pixels=int(_positive(extra, "max_pixels", DEFAULT_MAX_PIXELS, conn_id)),
        spend_policy=SpendPolicy(
            max_billed_calls=check_max_billed_calls(
                extra.get("max_billed_calls", DEFAULT_MAX_BILLED_CALLS), f"connection {conn_id!r} extra"
            ),
            claim_seconds=_positive(extra, "claim_seconds", DEFAULT_CLAIM_SECONDS, conn_id),
        ),
        omit_fields=_omit_fields(extra.get("omit_fields"), conn_id),
        prices=price_table_of(extra, conn_id),
    )


def _omit_fields(value: object, conn_id: str) -> frozenset[str]:
    """The ``omit_fields`` extra: a list of :data:`OMITTABLE_FIELDS`, e.g. ``["response_format"]``."""
    if value is None:
        return frozenset()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise BetterTokenConfigError(
            f"connection {conn_id!r} extra 'omit_fields' must be a list such as [\"response_format\"], "
            f"got {value!r}"
        )
    unknown = sorted(set(map(str, value)) - set(OMITTABLE_FIELDS))
    if unknown:
        raise BetterTokenConfigError(
            f"connection {conn_id!r} extra 'omit_fields' names {unknown}, which are always sent or unknown; "
            f"it may name: {', '.join(OMITTABLE_FIELDS)}"
        )
    return frozenset(value)


def _positive(extra: Mapping[str, Any], name: str, default: float, conn_id: str) -> float:
    value = extra.get(name, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or number <= 0:
        raise BetterTokenConfigError(
            f"connection {conn_id!r} extra {name!r} must be a number > 0, got {value!r}"
        )
    return number


def fix_hint(status: int, settings: ConnectionSettings, code: str | None = None) -> str:
    """What the user should change in the connection after this error status, or an empty string."""
    conn = f"connection {settings.conn_id!r}"
    if status == 400 and code == "unknown_parameter":
        return (
            f"The server behind {conn} refuses a field of BetterToken's documented form. OpenAI itself and "
            'strict OpenAI-compatible gateways refuse response_format: set the extra {"omit_fields": '
            f'["response_format"]}} (it may name: {", ".join(OMITTABLE_FIELDS)})'
        )
    if status in (401, 403):
        return f"Check the API key of {conn}: it belongs in the password field ('API Key' in the UI)" + (
            ", and the key must be allowed to use this model" if status == 403 else ""
        )
    if status == 404 and not settings.base_url.endswith("/v1"):
        return (
            f"The host of {conn} is {settings.base_url}, without /v1; "
            f"the base URL is probably {settings.base_url}/v1"
        )
    if status == 404:
        return f"Check the host of {conn}: it should be the API's base URL, such as {DEFAULT_BASE_URL}"
    return ""
