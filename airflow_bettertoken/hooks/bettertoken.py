"""The hook: a BetterToken connection turned into a session, and the retry loop around one paid call."""

from __future__ import annotations

import hashlib
import random
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import requests
from airflow.providers.common.compat.sdk import Stats
from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.log import mask_secret
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.exceptions import NewConnectionError

from airflow_bettertoken import __version__
from airflow_bettertoken.answer_stream import EditAnswerStream
from airflow_bettertoken.exceptions import (
    BetterTokenConfigError,
    BetterTokenError,
    BetterTokenTransportError,
    error_for_status,
)
from airflow_bettertoken.get_provider_info import UI_FIELD_BEHAVIOUR
from airflow_bettertoken.png import DEFAULT_MAX_PIXELS
from airflow_bettertoken.protocol import (
    DEFAULT_BASE_URL,
    EDITS_PATH,
    MODEL,
    MODELS_PATH,
    EditAnswer,
    EditRequest,
    ImageInput,
    build_edit_request,
    fingerprint,
    parse_error_answer,
)
from airflow_bettertoken.retry import Failure, RetryPolicy, decide, is_retryable_status

DEFAULT_TIMEOUT = 900.0
DEFAULT_CONNECT_TIMEOUT = 10.0
# Body chunks of 1 MiB: few Python-level steps for a 33 MB answer, little memory held per step.
_READ_CHUNK = 1 << 20
# TCP keepalive probes keep a request that waits minutes for its image alive behind NAT
# and load balancers, which otherwise drop an idle connection without telling either side.
_KEEPALIVE_OPTIONS = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 20), ("TCP_KEEPCNT", 6))


@dataclass(frozen=True)
class EditResult:
    """One generated image and how it was obtained."""

    png: bytes | bytearray = field(repr=False)
    width: int
    height: int
    requested_size: str
    revised_prompt: str | None
    usage: dict[str, Any] | None
    request_id: str | None
    attempts: int
    elapsed_s: float

    @property
    def size_matches(self) -> bool | None:
        """Whether the real size is the requested one; None when ``auto`` was asked for."""
        if self.requested_size == "auto":
            return None
        return f"{self.width}x{self.height}" == self.requested_size


@dataclass(frozen=True)
class ConnectionSettings:
    """What the hook reads from the Airflow connection, checked."""

    base_url: str
    api_key: str = field(repr=False)
    timeout: float
    connect_timeout: float
    verify: bool | str
    proxies: dict[str, str]
    retry_policy: RetryPolicy
    max_pixels: int


def keepalive_socket_options() -> list[tuple[int, int, int]]:
    options = [*HTTPConnection.default_socket_options, (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in _KEEPALIVE_OPTIONS:
        if hasattr(socket, name):  # Linux names; macOS and Windows lack some of them
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


class KeepAliveAdapter(HTTPAdapter):
    """An HTTPAdapter whose sockets, direct or through a proxy, send TCP keepalive probes."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["socket_options"] = keepalive_socket_options()
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["socket_options"] = keepalive_socket_options()
        return super().proxy_manager_for(proxy, **kwargs)


def failure_kind(err: requests.RequestException) -> Failure:
    """Whether a failed attempt may have reached the server (and been billed)."""
    if isinstance(err, requests.ConnectTimeout):
        return Failure.NOT_SENT
    if isinstance(err, requests.ConnectionError) and err.args:
        reason = getattr(err.args[0], "reason", None)
        if isinstance(reason, NewConnectionError):  # refused, unreachable, or no such host
            return Failure.NOT_SENT
    return Failure.MAYBE_BILLED


def _float_extra(extra: Mapping[str, Any], name: str, default: float) -> float:
    value = extra.get(name, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = -1.0
    if value <= 0:
        raise BetterTokenConfigError(f"connection extra {name!r} must be a number of seconds > 0")
    return value


def read_edit_answer(response: requests.Response, max_pixels: int) -> EditAnswer:
    """Decode a success body as it streams in, so that its base64 text is never held whole."""
    stream = EditAnswerStream(int(response.headers.get("content-length") or 0), max_pixels)
    for chunk in response.iter_content(chunk_size=_READ_CHUNK):
        stream.feed(chunk)
    return stream.finish()


class BetterTokenHook(BaseHook):
    """Calls BetterToken's OpenAI-compatible image edit endpoint.

    The connection's host is the base URL (with ``/v1``), its password the API key.
    Extras: ``timeout`` (read, default 900 s), ``connect_timeout`` (10 s), ``verify``,
    ``proxies``, ``max_pixels``, and the :class:`~airflow_bettertoken.retry.RetryPolicy` fields.

    :param bettertoken_conn_id: the Airflow connection to use.
    :param retry: retry policy fields that override the connection extra.
    :param sleep: waits between attempts; tests pass a recorder.
    :param clock: a monotonic clock for the deadline.
    :param wall_clock: Unix time, for ``Retry-After`` dates.
    """

    conn_name_attr = "bettertoken_conn_id"
    default_conn_name = "bettertoken_default"
    conn_type = "bettertoken"
    hook_name = "BetterToken"

    def __init__(
        self,
        bettertoken_conn_id: str = default_conn_name,
        *,
        retry: Mapping[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bettertoken_conn_id = bettertoken_conn_id
        self.retry_overrides = dict(retry or {})
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return UI_FIELD_BEHAVIOUR

    @cached_property
    def settings(self) -> ConnectionSettings:
        """The connection, read once and checked; the API key is registered with the secrets masker."""
        try:
            conn = self.get_connection(self.bettertoken_conn_id)
        except AirflowNotFoundException as err:
            raise BetterTokenConfigError(
                f"connection {self.bettertoken_conn_id!r} is not defined; create it in the UI or set "
                f"AIRFLOW_CONN_{self.bettertoken_conn_id.upper()}"
            ) from err
        api_key = conn.password or ""
        if not api_key.strip():
            raise BetterTokenConfigError(
                f"connection {self.bettertoken_conn_id!r} has no API key; put it in the password field"
            )
        # Masking is automatic for connections read inside a running task, not elsewhere.
        mask_secret(api_key)
        base_url = (conn.host or DEFAULT_BASE_URL).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise BetterTokenConfigError(
                f"connection {self.bettertoken_conn_id!r} host must be a base URL starting with "
                f"https:// (or http:// for a local emulator), such as {DEFAULT_BASE_URL}"
            )
        extra = conn.extra_dejson
        proxies = extra.get("proxies") or {}
        if not isinstance(proxies, dict):
            raise BetterTokenConfigError(
                "connection extra 'proxies' must be a mapping of scheme to proxy URL"
            )
        return ConnectionSettings(
            base_url=base_url,
            api_key=api_key,
            timeout=_float_extra(extra, "timeout", DEFAULT_TIMEOUT),
            connect_timeout=_float_extra(extra, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            verify=extra.get("verify", True),
            proxies=proxies,
            retry_policy=RetryPolicy().with_options(extra).with_options(self.retry_overrides),
            max_pixels=int(extra.get("max_pixels", DEFAULT_MAX_PIXELS)),
        )

    @cached_property
    def _session(self) -> requests.Session:
        settings = self.settings
        session = requests.Session()
        adapter = KeepAliveAdapter()
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers["Authorization"] = f"Bearer {settings.api_key}"
        session.headers["User-Agent"] = f"airflow-bettertoken/{__version__}"
        session.verify = settings.verify
        session.proxies.update(settings.proxies)
        return session

    def get_conn(self) -> requests.Session:
        return self._session

    def test_connection(self) -> tuple[bool, str]:
        """List the models with ``GET /models``: cheap, and never a paid call."""
        try:
            settings = self.settings
            response = self._session.get(
                settings.base_url + MODELS_PATH, timeout=(settings.connect_timeout, 30)
            )
        except (BetterTokenError, requests.RequestException) as err:
            return False, self._redact(f"{type(err).__name__}: {err}")
        if response.status_code != 200:
            error = parse_error_answer(response.status_code, response.content)
            return False, self._redact(f"GET /models answered {response.status_code}: {error.message}")
        try:
            models = [m.get("id") for m in response.json().get("data", [])]
        except (ValueError, AttributeError):
            return False, "GET /models answered 200 with a body that is not a model list"
        note = "" if MODEL in models else f"; {MODEL} is not among them"
        return True, f"Connected to {settings.base_url}: {len(models)} models{note}"

    def edit_image(
        self,
        prompt: str,
        images: Sequence[ImageInput],
        size: str = "auto",
        *,
        idempotency_key: str | None = None,
    ) -> EditResult:
        """Make one edit: a single paid call, retried only as the policy allows.

        :param prompt: what to do with the references.
        :param images: 1 to 16 references, each ``bytes`` or a ``(filename, bytes)`` pair.
        :param size: one of :data:`~airflow_bettertoken.protocol.SIZES`.
        :param idempotency_key: sent as ``Idempotency-Key`` on every attempt; derived from the
            inputs when not given.
        :raises BetterTokenInputError: before anything is sent, for bad input.
        """
        request = build_edit_request(prompt, images, size)
        settings = self.settings
        if idempotency_key is None:
            digests = [hashlib.sha256(image.content).hexdigest() for image in request.images]
            idempotency_key = fingerprint(MODEL, prompt, size, digests)
        url = settings.base_url + EDITS_PATH
        policy = settings.retry_policy
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            try:
                response, answer = self._post_once(url, request, idempotency_key)
            except requests.RequestException as err:
                kind = failure_kind(err)
                decision = self._decide(policy, attempt, started, failure=kind)
                what = f"{kind.value}: {type(err).__name__}"
                if not decision.retry:
                    raise BetterTokenTransportError(
                        f"no answer from {url} after {attempt} attempt(s) ({what}); {decision.reason}",
                        maybe_billed=kind is Failure.MAYBE_BILLED,
                        attempts=attempt,
                    ) from err
                log = self.log.warning if kind is Failure.MAYBE_BILLED else self.log.info
                log(
                    "Attempt %d of %d got no answer (%s); retrying in %.1f s",
                    attempt,
                    policy.max_attempts,
                    what,
                    decision.wait,
                )
                self._sleep(decision.wait)
                continue

            request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
            if answer is not None:
                elapsed = round(self._clock() - started, 3)
                Stats.timing("bettertoken.request.latency", elapsed * 1000)
                Stats.incr("bettertoken.request.attempts", attempt)
                Stats.incr("bettertoken.response.png_bytes", len(answer.png))
                self.log.info(
                    "Edited %d reference(s) into a %dx%d PNG of %d bytes in %d attempt(s), %.1f s",
                    len(request.images),
                    answer.width,
                    answer.height,
                    len(answer.png),
                    attempt,
                    elapsed,
                )
                return EditResult(
                    png=answer.png,
                    width=answer.width,
                    height=answer.height,
                    requested_size=size,
                    revised_prompt=answer.revised_prompt,
                    usage=answer.usage,
                    request_id=request_id,
                    attempts=attempt,
                    elapsed_s=elapsed,
                )

            status = response.status_code
            decision = self._decide(policy, attempt, started, status=status, headers=response.headers)
            error = parse_error_answer(status, response.content)
            if not decision.retry:
                raise error_for_status(
                    status,
                    self._redact(
                        f"BetterToken answered {status} ({error.code or 'no code'}): {error.message}; "
                        f"{decision.reason}" + (f" [request id {request_id}]" if request_id else "")
                    ),
                    retryable=is_retryable_status(status, response.headers),
                    code=error.code,
                    request_id=request_id,
                    attempts=attempt,
                )
            self.log.info(
                "Attempt %d of %d answered %d (%s); retrying in %.1f s",
                attempt,
                policy.max_attempts,
                status,
                error.code,
                decision.wait,
            )
            self._sleep(decision.wait)

    def _post_once(
        self, url: str, request: EditRequest, idempotency_key: str
    ) -> tuple[requests.Response, EditAnswer | None]:
        """One attempt: a success decoded as it streams in, or an error with its (small) body read."""
        settings = self.settings
        response = self._session.post(
            url,
            data=request.form_fields(),
            files=request.form_files(),
            headers={"Idempotency-Key": idempotency_key},
            timeout=(settings.connect_timeout, settings.timeout),
            stream=True,
        )
        with response:
            if 200 <= response.status_code < 300:
                return response, read_edit_answer(response, settings.max_pixels)
            response.content  # noqa: B018 (reads the body while the connection is open)
            return response, None

    def _decide(self, policy: RetryPolicy, attempt: int, started: float, **outcome: Any):
        return decide(
            policy,
            attempt=attempt,
            elapsed=self._clock() - started,
            now=self._wall_clock(),
            random_fraction=random.random(),
            **outcome,
        )

    def _redact(self, text: str) -> str:
        """Cut the API key out of text that came from elsewhere (a server message, a library error).

        Reads the key only if the connection was read already: redacting never looks one up.
        """
        settings = self.__dict__.get("settings")  # the cached_property's value, if computed
        key = settings.api_key if settings else None
        return text.replace(key, "***") if key else text
