"""The hook: a BetterToken connection turned into a session, and the retry loop around one paid call."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import requests
from airflow.providers.common.compat.sdk import AirflowNotFoundException, BaseHook, Stats, mask_secret

from airflow_bettertoken import __version__
from airflow_bettertoken.exceptions import (
    BetterTokenConfigError,
    BetterTokenError,
    BetterTokenResponseError,
    BetterTokenTransportError,
    error_for_status,
)
from airflow_bettertoken.get_provider_info import UI_FIELD_BEHAVIOUR
from airflow_bettertoken.hooks._connection import ConnectionSettings, fix_hint, read_settings
from airflow_bettertoken.hooks._transport import failure_kind, new_session, read_edit_answer
from airflow_bettertoken.protocol.png import PngHeader, verify_png
from airflow_bettertoken.protocol.price import PriceTable, Pricing
from airflow_bettertoken.protocol.result import EditResult
from airflow_bettertoken.protocol.retry import Failure, RetryDecision, RetryLoop, Timing, is_retryable_status
from airflow_bettertoken.protocol.spend import (
    Outcome,
    SpendGuard,
    SpendPolicy,
    outcome_of_failure,
    outcome_of_status,
)
from airflow_bettertoken.protocol.wire import (
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

__all__ = ["BetterTokenHook", "EditResult"]


@dataclass
class _Reply:
    """What came back for one call: its status, and the decoded answer or the error's (small) body."""

    status: int
    headers: Mapping[str, str]
    request_id: str | None
    answer: EditAnswer | None = None
    error_body: bytes = b""


class _AnswerCut(Exception):
    """A 2xx answer whose body broke off: the image was billed, but never arrived whole."""

    def __init__(self, reply: _Reply, error: requests.RequestException) -> None:
        super().__init__(str(error))
        self.reply, self.error = reply, error


class _Call:
    """One call as the spend guard hears of it: written down before it is sent, and how it ended.

    A failure to record how a call ended never loses its answer: the call stays open in the
    ledger, which counts it as billed.
    """

    def __init__(self, guard: SpendGuard | None, timing: Timing, log: Any, pricing: Pricing | None) -> None:
        self.guard, self.timing, self.log, self.pricing = guard, timing, log, pricing
        if guard is not None:
            guard.before_send()
        self.sent_at = timing.clock()

    def ended(self, outcome: Outcome, **how: Any) -> None:
        """Tell the guard how the call ended: ``how`` holds the keywords of :meth:`SpendGuard.after_call`."""
        if self.guard is None:
            return
        try:
            elapsed_s = self.timing.clock() - self.sent_at
            self.guard.after_call(outcome, elapsed_s=elapsed_s, pricing=self.pricing, **how)
        except Exception as err:
            self.log.warning(
                "Could not record how the call ended (%s: %s); it stays open", type(err).__name__, err
            )

    def paid_but_unusable(
        self, err: BetterTokenResponseError, *, status: int, usage: Mapping[str, Any] | None = None
    ) -> None:
        self.ended(
            Outcome.PAID,
            cause=f"an unusable answer: {err}",
            status=status,
            request_id=err.request_id,
            evidence=err.evidence,
            usage=usage,
        )


class BetterTokenHook(BaseHook):
    """Calls BetterToken's OpenAI-compatible image edit endpoint.

    The connection's host is the base URL (with ``/v1``), its password the API key.
    Extras: ``timeout`` (read, default 900 s), ``connect_timeout`` (10 s), ``verify``,
    ``proxies``, ``max_pixels``, ``omit_fields`` (form fields a strict gateway refuses), ``prices``
    (the price table, :class:`~airflow_bettertoken.protocol.price.PriceTable`), and the
    :class:`~airflow_bettertoken.protocol.retry.RetryPolicy` fields.

    :param bettertoken_conn_id: the Airflow connection to use.
    :param api_retry: retry policy fields that override the connection extra, e.g.
        ``{"max_attempts": 2}`` (the operators' ``api_retry``).
    :param timing: sleep and clocks for the retry loop; tests pass a recorder.
    """

    conn_name_attr = "bettertoken_conn_id"
    default_conn_name = "bettertoken_default"
    conn_type = "bettertoken"
    hook_name = "BetterToken"

    def __init__(
        self,
        bettertoken_conn_id: str = default_conn_name,
        *,
        api_retry: Mapping[str, Any] | None = None,
        timing: Timing | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.bettertoken_conn_id = bettertoken_conn_id
        self.api_retry = dict(api_retry or {})
        self.timing = timing or Timing()

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The connection form, for Airflow 3.0 and 3.1: they read it here, 3.2+ from the provider info.

        The provider info spells its keys ``hidden-fields``; this method's answer must pass Airflow's
        ``customized_form_field_behaviours`` schema, which wants ``hidden_fields``: one source, two spellings.
        """
        return {key.replace("-", "_"): value for key, value in UI_FIELD_BEHAVIOUR.items()}

    @cached_property
    def _settings(self) -> ConnectionSettings:
        """The connection, read once and checked; the API key is registered with the secrets masker."""
        try:
            conn = self.get_connection(self.bettertoken_conn_id)
        except AirflowNotFoundException as err:
            raise BetterTokenConfigError(
                f"connection {self.bettertoken_conn_id!r} is not defined; create it in the UI or set "
                f"AIRFLOW_CONN_{self.bettertoken_conn_id.upper()}"
            ) from err
        if conn.password:
            # Masking is automatic for connections read inside a running task, not elsewhere.
            mask_secret(conn.password)
        return read_settings(conn, self.bettertoken_conn_id, self.api_retry, self.log)

    @cached_property
    def _session(self) -> requests.Session:
        settings = self._settings
        session = new_session()
        session.headers["Authorization"] = f"Bearer {settings.api_key}"
        session.headers["User-Agent"] = f"airflow-bettertoken/{__version__}"
        session.verify = settings.verify
        session.proxies.update(settings.proxies)
        return session

    def get_conn(self) -> requests.Session:
        return self._session

    def check_config(self) -> None:
        """Read and check the connection, so that a bad one fails before anything is read or paid.

        The price table is part of it: one that does not parse fails here, once, before any call.
        """
        self._settings  # noqa: B018 (reading it is the check)

    def price_table(self) -> PriceTable | None:
        """The connection's price table (extra ``prices``); None without one.

        :raises BetterTokenConfigError: naming the connection and the field, when it does not parse.
        """
        return self._settings.prices

    def test_connection(self) -> tuple[bool, str]:
        """List the models with ``GET /models``: cheap, and never a paid call."""
        try:
            settings = self._settings
            url = settings.base_url + MODELS_PATH
            response = self._session.get(url, timeout=(settings.connect_timeout, 30))
        except (BetterTokenError, requests.RequestException) as err:
            return False, self._redact(f"{type(err).__name__}: {err}")
        if response.status_code != 200:
            error = parse_error_answer(response.status_code, response.content)
            return False, self._error_text(response.status_code, error.message, "GET", url)
        try:
            models = [m.get("id") for m in response.json().get("data", [])]
        except (ValueError, AttributeError):
            return False, f"GET {url} answered 200 with a body that is not a model list"
        note = "" if MODEL in models else f"; {MODEL} is not among them"
        return True, f"Connected to {settings.base_url}: {len(models)} models{note}"

    def spend_policy(self, max_billed_calls: int | None = None) -> SpendPolicy:
        """The connection's bounds on spend per image, with an operator's ``max_billed_calls`` applied."""
        policy = self._settings.spend_policy
        if max_billed_calls is None:
            return policy
        return dataclasses.replace(policy, max_billed_calls=max_billed_calls)

    def how_to_raise_the_budget(self, now: int) -> str:
        """Where a user raises ``max_billed_calls``, for messages that refuse a call."""
        return (
            f"To allow more calls for this image, raise max_billed_calls (now {now}) in the extra of "
            f"connection {self.bettertoken_conn_id!r}, or pass max_billed_calls= to the operator"
        )

    @property
    def read_timeout(self) -> float:
        return self._settings.timeout

    def verify_png(self, png: bytes | bytearray) -> PngHeader:
        """Check every byte of a PNG under this connection's ``max_pixels``, e.g. one kept from a past run."""
        return verify_png(png, self._settings.max_pixels)

    def edit_image(
        self,
        prompt: str,
        images: Sequence[ImageInput],
        size: str = "auto",
        *,
        idempotency_key: str | None = None,
        guard: SpendGuard | None = None,
    ) -> EditResult:
        """Make one edit: a single paid call, retried only as the policy allows.

        The PNG in the result has been checked whole: every chunk, its pixel data, and its size
        against ``max_pixels``.

        :param prompt: what to do with the references.
        :param images: 1 to 16 references, each ``bytes`` or a ``(filename, bytes)`` pair.
        :param size: one of :data:`~airflow_bettertoken.protocol.wire.SIZES`.
        :param idempotency_key: sent as ``Idempotency-Key`` on every attempt; derived from the
            inputs when not given.
        :param guard: the spend ledger, told before every call is sent and after it ends; it may
            refuse a call (the operator passes one; without it nothing bounds spend across tries).
        :raises BetterTokenInputError: before anything is sent, for bad input.
        """
        request = build_edit_request(prompt, images, size)
        if idempotency_key is None:
            digests = [hashlib.sha256(image.content).hexdigest() for image in request.images]
            idempotency_key = fingerprint(MODEL, prompt, size, digests)
        url = self._settings.base_url + EDITS_PATH
        loop = RetryLoop(self._settings.retry_policy, self.timing)
        table = self.price_table()
        pricing = Pricing(self.bettertoken_conn_id, table, request.size) if table is not None else None
        while True:
            loop.begin_attempt()
            call = _Call(guard, self.timing, self.log, pricing)
            try:
                reply = self._post_once(url, request, idempotency_key)
            except requests.RequestException as err:
                decision = self._after_no_answer(loop, call, err, url)
            except _AnswerCut as cut:
                decision = self._after_cut_answer(loop, call, cut, url)
            except BetterTokenResponseError as err:
                call.paid_but_unusable(err, status=200)
                raise
            else:
                if reply.answer is not None:
                    return self._checked(reply, request, loop, call)
                decision = self._after_error_status(loop, call, reply, url)
            loop.wait(decision)

    def _post_once(self, url: str, request: EditRequest, idempotency_key: str) -> _Reply:
        """One attempt: a success decoded as it streams in, or an error with its (small) body read.

        :raises requests.RequestException: when no answer came.
        :raises _AnswerCut: when a 2xx answer's body broke off before its end.
        :raises BetterTokenResponseError: when a 2xx answer is unusable, with ``evidence`` and ``request_id``.
        """
        settings = self._settings
        response = self._session.post(
            url,
            data=request.form_fields(omit=settings.omit_fields),
            files=request.form_files(),
            headers={"Idempotency-Key": idempotency_key},
            timeout=(settings.connect_timeout, settings.timeout),
            stream=True,
        )
        with response:
            request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
            reply = _Reply(response.status_code, response.headers, request_id)
            if not 200 <= response.status_code < 300:
                reply.error_body = response.content  # read while the connection is open
                return reply
            try:
                reply.answer = read_edit_answer(response, settings.max_pixels)
            except requests.RequestException as err:
                raise _AnswerCut(reply, err) from err
            except BetterTokenResponseError as err:
                err.request_id = request_id
                raise
            return reply

    def _after_no_answer(
        self, loop: RetryLoop, call: _Call, err: requests.RequestException, url: str
    ) -> RetryDecision:
        """Record a call that got no answer; the decision to retry, or the error that ends the loop."""
        kind = failure_kind(err)
        what = f"{kind.value}: {type(err).__name__}"
        call.ended(outcome_of_failure(kind), cause=what, sent=kind is Failure.MAYBE_BILLED)
        decision = loop.after_failure(failure=kind)
        if not decision.retry:
            raise BetterTokenTransportError(
                f"no answer from POST {url} (connection {self.bettertoken_conn_id!r}) after "
                f"{loop.attempt} attempt(s) ({what}); {decision.reason}",
                maybe_billed=kind is Failure.MAYBE_BILLED,
                attempts=loop.attempt,
            ) from err
        log = self.log.warning if kind is Failure.MAYBE_BILLED else self.log.info
        log("Attempt %d got no answer (%s); retrying in %.1f s", loop.attempt, what, decision.wait)
        return decision

    def _after_cut_answer(self, loop: RetryLoop, call: _Call, cut: _AnswerCut, url: str) -> RetryDecision:
        """A 2xx came, so the image was made and billed, but its body never arrived whole."""
        what = f"answered {cut.reply.status}, then the body was cut ({type(cut.error).__name__})"
        call.ended(Outcome.PAID, cause=what, status=cut.reply.status, request_id=cut.reply.request_id)
        decision = loop.after_failure(failure=Failure.MAYBE_BILLED)
        if not decision.retry:
            raise BetterTokenTransportError(
                f"POST {url} (connection {self.bettertoken_conn_id!r}) {what} after {loop.attempt} "
                f"attempt(s); {decision.reason}",
                maybe_billed=True,
                attempts=loop.attempt,
            ) from cut.error
        self.log.warning("Attempt %d %s; retrying in %.1f s", loop.attempt, what, decision.wait)
        return decision

    def _after_error_status(self, loop: RetryLoop, call: _Call, reply: _Reply, url: str) -> RetryDecision:
        """Record an error answer; the decision to retry, or the error that ends the loop."""
        status = reply.status
        call.ended(
            outcome_of_status(status), cause=f"HTTP {status}", status=status, request_id=reply.request_id
        )
        decision = loop.after_failure(status=status, headers=reply.headers)
        error = parse_error_answer(status, reply.error_body)
        if not decision.retry:
            message = self._error_text(status, error.message, "POST", url, error.code)
            request = f" [request id {reply.request_id}]" if reply.request_id else ""
            raise error_for_status(
                status,
                f"{message}; {decision.reason}{request}",
                retryable=is_retryable_status(status, reply.headers),
                code=error.code,
                request_id=reply.request_id,
                attempts=loop.attempt,
            )
        self.log.info(
            "Attempt %d answered %d (%s); retrying in %.1f s", loop.attempt, status, error.code, decision.wait
        )
        return decision

    def _checked(self, reply: _Reply, request: EditRequest, loop: RetryLoop, call: _Call) -> EditResult:
        """The result of a 2xx answer whose PNG passed every check; a broken one is recorded as evidence."""
        answer = reply.answer
        assert answer is not None
        try:
            result = self._result(answer, request, loop.attempt, loop.elapsed, reply.request_id)
        except BetterTokenResponseError as err:
            err.evidence, err.request_id = answer.png, reply.request_id
            call.paid_but_unusable(err, status=reply.status, usage=answer.usage)
            raise
        call.ended(
            Outcome.PAID,
            cause="a usable image",
            status=reply.status,
            request_id=reply.request_id,
            usage=answer.usage,
        )
        return result

    def _result(
        self, answer: EditAnswer, request: EditRequest, attempts: int, elapsed: float, request_id: str | None
    ) -> EditResult:
        # A paid answer whose PNG is broken is not retried: BetterTokenResponseError is permanent.
        self.verify_png(answer.png)
        elapsed = round(elapsed, 3)
        Stats.timing("bettertoken.request.latency", elapsed * 1000)
        Stats.incr("bettertoken.request.attempts", attempts)
        Stats.incr("bettertoken.response.png_bytes", len(answer.png))
        self.log.info(
            "Edited %d reference(s) into a %dx%d PNG of %d bytes in %d attempt(s), %.1f s",
            len(request.images),
            answer.width,
            answer.height,
            len(answer.png),
            attempts,
            elapsed,
        )
        return EditResult.from_answer(
            answer, requested_size=request.size, request_id=request_id, attempts=attempts, elapsed_s=elapsed
        )

    def _error_text(self, status: int, message: str, method: str, url: str, code: str | None = None) -> str:
        """An error answer as the user reads it: what was called, what it said, and what to fix."""
        hint = fix_hint(status, self._settings, code)
        text = (
            f"BetterToken answered {status} ({code or 'no code'}) to {method} {url} "
            f"(connection {self.bettertoken_conn_id!r}): {message}" + (f". {hint}" if hint else "")
        )
        return self._redact(text)

    def _redact(self, text: str) -> str:
        """Cut the API key out of text that came from elsewhere (a server message, a library error).

        Reads the key only if the connection was read already: redacting never looks one up.
        """
        settings = self.__dict__.get("_settings")  # the cached_property's value, if computed
        key = settings.api_key if settings else None
        return text.replace(key, "***") if key else text
