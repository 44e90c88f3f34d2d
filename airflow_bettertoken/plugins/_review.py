"""The review page's writes: who may submit, the cross-site guard, and reading the submitted form.

**Cross-site requests.** The page has no script, so a submit is a plain HTML form POST that the browser
sends with Airflow's session cookie. Two checks refuse one forged by another site:

1. a **CSRF token** in the form's action URL (``review?csrf_token=...``): an HMAC, keyed by a secret
   derived from ``[api_auth] jwt_secret`` (which every API server worker shares, as it must to
   accept each other's tokens), of the user, the DAG, the run and an expiry. Another site cannot
   read the page, so it cannot know it. It is the check that holds wherever the request comes from,
   including behind a proxy that drops the ``Origin`` header, and for clients that send none;
2. an **Origin check**: a browser names the page that sent a POST in ``Origin``; when it is there it
   must be this server's own origin (``[api] base_url``, or the request's own scheme and host).

Airflow's cookie is ``SameSite=Lax`` too, which keeps it off cross-site POSTs in today's browsers;
the two checks do not rely on that.

The token travels in the URL, not in the body, so that a forged or oversized submit is refused before
its body is read or parsed: first the Origin and the token, then the declared length, then the body,
read only up to :data:`MAX_BODY_BYTES`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from airflow.providers.common.compat.sdk import conf

__all__ = [
    "CSRF_FIELD",
    "FormError",
    "FormRow",
    "FormTooLarge",
    "check_origin",
    "csrf_token",
    "parse_form",
    "read_form",
    "valid_csrf_token",
]

CSRF_FIELD = "csrf_token"
#: How long a page's token is good for: a long review session, not a stolen token kept for days.
CSRF_SECONDS = 12 * 3600
_PROCESS_KEY = secrets.token_bytes(32)
#: At most this many rows in one submit: a page shows 50.
MAX_ROWS = 200
MAX_BODY_BYTES = 2 * 1024 * 1024


def _key() -> bytes:
    secret = conf.get("api_auth", "jwt_secret", fallback="") or ""
    if not secret:  # each worker then has its own: set [api_auth] jwt_secret with several workers
        return _PROCESS_KEY
    return hmac.new(secret.encode(), b"airflow-bettertoken review form", hashlib.sha256).digest()


def _mac(user: str, dag_id: str, run_id: str, expires: int) -> str:
    message = "\n".join((user, dag_id, run_id, str(expires))).encode()
    return hmac.new(_key(), message, hashlib.sha256).hexdigest()


def csrf_token(user: str, dag_id: str, run_id: str, now: float | None = None) -> str:
    """The token the page's form carries: good for this user, DAG and run, for ``CSRF_SECONDS``."""
    expires = int((now or time.time()) + CSRF_SECONDS)
    return f"{expires}.{_mac(user, dag_id, run_id, expires)}"


def valid_csrf_token(
    token: str | None, user: str, dag_id: str, run_id: str, now: float | None = None
) -> bool:
    expires, _, mac = (token or "").partition(".")
    if not expires.isdigit() or int(expires) < (now or time.time()):
        return False
    return hmac.compare_digest(mac, _mac(user, dag_id, run_id, int(expires)))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_origin(origin: str | None, scheme: str, host: str | None) -> bool:
    """Whether a POST's ``Origin`` is this server's own; a request without one passes (the token decides)."""
    if origin is None:
        return True
    allowed = {f"{scheme}://{host}".lower()} if host else set()
    base_url = conf.get("api", "base_url", fallback="") or ""
    if base_url:
        allowed.add(_origin(base_url))
    return origin.lower() in allowed


@dataclass(frozen=True)
class FormRow:
    """One row's choice on the submitted page; ``action`` is empty when the reviewer left it."""

    task_id: str
    map_index: int
    action: str
    prompt: str | None = None
    size: str | None = None


class FormError(ValueError):
    """The submitted form is not one this page makes: the message names the field."""


class FormTooLarge(FormError):
    """The submitted body is over :data:`MAX_BODY_BYTES`, or does not say how long it is."""


async def read_form(content_length: str | None, chunks: AsyncIterator[bytes]) -> bytes:
    """The body of a submit, refused by its declared length before a byte is read, and never read past
    :data:`MAX_BODY_BYTES` whatever it declared.

    :raises FormTooLarge: naming the limit.
    """
    if content_length is None or not content_length.isdigit():
        raise FormTooLarge("the submit must say its length (Content-Length): send the page's form")
    if int(content_length) > MAX_BODY_BYTES:
        raise FormTooLarge(f"the form is over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise FormTooLarge(f"the form is over {MAX_BODY_BYTES} bytes")
    return bytes(body)


def parse_form(body: bytes) -> list[FormRow]:
    """The rows with a decision, from an ``application/x-www-form-urlencoded`` body.

    A row's fields are ``decision.<task_id>.<map_index>``, ``prompt.<...>`` and ``size.<...>``.
    """
    fields: Mapping[str, list[str]] = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    rows = []
    for name, values in fields.items():
        kind, _, ref = name.partition(".")
        if kind != "decision" or not values[0]:
            continue
        task_id, _, index = ref.rpartition(".")
        try:
            map_index = int(index)
        except ValueError as err:
            raise FormError(f"form field {name!r} does not name a task instance") from err
        first = {key: (fields.get(f"{key}.{ref}") or [None])[0] for key in ("prompt", "size")}
        rows.append(FormRow(task_id, map_index, values[0], first["prompt"], first["size"]))
    if len(rows) > MAX_ROWS:
        raise FormError(f"the form decides {len(rows)} images; at most {MAX_ROWS} at once")
    return rows
