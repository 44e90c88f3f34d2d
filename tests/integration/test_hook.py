"""The hook against the emulator over real HTTP on loopback."""

from __future__ import annotations

import base64
import socket

import pytest

from airflow_bettertoken.exceptions import (
    BetterTokenAuthenticationError,
    BetterTokenBadRequestError,
    BetterTokenConfigError,
    BetterTokenInputError,
    BetterTokenResponseError,
)
from airflow_bettertoken.hooks.bettertoken import BetterTokenHook
from airflow_bettertoken.testing.samples import sample_image
from tests.broken_pngs import with_bad_crc

PNG = sample_image(300, 200, "png")
JPEG = sample_image(200, 300, "jpg", seed=1)
WEBP = sample_image(200, 200, "webp", seed=2)


def test_one_reference_on_the_wire(emulator):
    result = BetterTokenHook().edit_image("make it shine", [("mug.png", PNG)], "1024x1024")

    [received] = emulator.stats()["requests"]
    assert received["fields"] == {
        "model": "gpt-image-2",
        "prompt": "make it shine",
        "n": "1",
        "size": "1024x1024",
        "response_format": "b64_json",
        "output_format": "png",
    }
    assert received["files"] == [
        {"field": "image", "filename": "mug.png", "content_type": "image/png", "bytes": len(PNG)}
    ]
    assert (result.width, result.height, result.size_matches) == (1024, 1024, True)
    assert result.png.startswith(b"\x89PNG")
    assert result.request_id.startswith("req_")
    assert result.usage["total_tokens"] > 0
    assert result.attempts == 1


def test_several_references_on_the_wire_in_order(emulator):
    BetterTokenHook().edit_image("blend", [("a.jpg", JPEG), ("b.webp", WEBP), PNG])

    [received] = emulator.stats()["requests"]
    assert [(f["field"], f["filename"], f["content_type"]) for f in received["files"]] == [
        ("image[]", "a.jpg", "image/jpeg"),
        ("image[]", "b.webp", "image/webp"),
        ("image[]", "image-3.png", "image/png"),
    ]


def test_the_decoded_image_is_the_truth_when_the_server_changes_the_size(emulator):
    emulator.configure(size_map={"1536x1024": "1520x1008"})
    result = BetterTokenHook().edit_image("wide", [PNG], "1536x1024")
    assert (result.width, result.height) == (1520, 1008)
    assert result.requested_size == "1536x1024"
    assert result.size_matches is False


def test_auto_size_follows_the_reference(emulator):
    result = BetterTokenHook().edit_image("tall", [JPEG])
    assert (result.width, result.height, result.size_matches) == (1024, 1536, None)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (
            {
                "status": 400,
                "json": {"error": {"message": "Your request was rejected by the safety system."}},
            },
            BetterTokenBadRequestError,
        ),
        (
            {"status": 401, "json": {"error": {"message": "Incorrect API key provided."}}},
            BetterTokenAuthenticationError,
        ),
    ],
    ids=["400", "401"],
)
def test_client_errors_are_not_retried(emulator, fault, error):
    emulator.queue(fault)
    with pytest.raises(error) as info:
        BetterTokenHook().edit_image("x", [PNG])
    assert emulator.stats()["posts"] == 1
    assert info.value.retryable is False
    assert f"answered {fault['status']}" in str(info.value)


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 429, "headers": {"retry-after-ms": "10"}, "json": {"error": {"message": "slow down"}}},
        {"status": 500, "json": {"error": {"message": "oops"}}},
    ],
    ids=["429", "500"],
)
def test_transient_errors_are_retried_with_the_same_idempotency_key(emulator, fault):
    emulator.queue(fault)
    result = BetterTokenHook().edit_image("x", [PNG])
    stats = emulator.stats()
    assert (stats["posts"], stats["paid"], result.attempts) == (2, 1, 2)
    keys = {r["idempotency_key"] for r in stats["requests"]}
    assert len(keys) == 1 and None not in keys


def test_bad_input_is_refused_before_any_request(emulator):
    with pytest.raises(BetterTokenInputError, match="not PNG, JPEG or WEBP"):
        BetterTokenHook().edit_image("x", [b"GIF89a" + b"\0" * 100])
    assert emulator.stats()["posts"] == 0


def test_test_connection_lists_models_without_paying(emulator, connection):
    ok, message = BetterTokenHook().test_connection()
    assert ok, message
    assert "1 models" in message
    ok, message = BetterTokenHook(connection(password="sk-wrong-key-123456")).test_connection()
    assert not ok
    assert "401" in message
    assert emulator.stats()["posts"] == 0


@pytest.mark.parametrize(
    ("conn", "message"),
    [
        ({"password": ""}, "has no API key"),
        ({"host": "www.bettertoken.ai/v1"}, "must be a base URL starting with https://"),
        ({"extra": {"timeout": "soon"}}, "'timeout' must be a number > 0"),
        ({"extra": {"max_attempts": 0}}, "max_attempts must be at least 1"),
        ({"extra": {"omit_fields": "response_format"}}, r"'omit_fields' must be a list such as \["),
        ({"extra": {"omit_fields": ["prompt"]}}, r"names \['prompt'\], which are always sent or unknown"),
    ],
    ids=["no-key", "no-scheme", "bad-timeout", "zero-attempts", "omit-not-a-list", "omit-prompt"],
)
def test_bad_connections_are_refused_before_any_request(emulator, connection, conn, message):
    hook = BetterTokenHook(connection(**conn))
    with pytest.raises(BetterTokenConfigError, match=message):
        hook.edit_image("x", [PNG])
    assert emulator.stats()["posts"] == 0


def test_unknown_connection_is_named(emulator):
    with pytest.raises(BetterTokenConfigError, match="'no_such_conn' is not defined"):
        BetterTokenHook("no_such_conn").edit_image("x", [PNG])


def test_sessions_send_tcp_keepalive(sandbox):
    hook = BetterTokenHook()
    hook.edit_image("x", [PNG])
    adapter = hook.get_conn().get_adapter(sandbox.emulator.base_url)
    options = adapter.poolmanager.connection_pool_kw["socket_options"]
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in options
    pools = adapter.poolmanager.pools
    [pool] = [pools[key] for key in pools.keys()]  # noqa: SIM118 (the container refuses iteration)
    [used] = [conn for conn in pool.pool.queue if conn is not None]  # the edit's, back in the pool
    assert used.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


@pytest.mark.parametrize("png", [PNG[: len(PNG) // 2], with_bad_crc(PNG)], ids=["truncated", "bad-crc"])
def test_the_hook_returns_only_a_png_checked_whole(emulator, png):
    """A user calling the hook from their own @task never gets a broken image to store."""
    body = {"created": 1, "data": [{"b64_json": base64.b64encode(png).decode()}]}
    emulator.queue({"status": 200, "json": body})
    with pytest.raises(BetterTokenResponseError):
        BetterTokenHook().edit_image("x", [PNG])
    assert emulator.stats()["posts"] == 1  # paid, so not retried


def test_an_unknown_connection_extra_is_named_with_the_known_ones(emulator, connection, caplog, capfd):
    hook = BetterTokenHook(connection(extra={"time_out": 60}))
    hook.check_config()
    logged = caplog.text + "".join(capfd.readouterr())  # Airflow may route hook logs to structlog
    assert "unknown extra ['time_out'] ignored" in logged
    assert "'timeout'" in logged and "'max_attempts'" in logged


@pytest.mark.parametrize("value", ["big", 0, -5, True], ids=["text", "zero", "negative", "bool"])
def test_a_bad_max_pixels_is_a_config_error(emulator, connection, value):
    with pytest.raises(BetterTokenConfigError, match="'max_pixels' must be a number > 0"):
        BetterTokenHook(connection(extra={"max_pixels": value})).check_config()


def test_a_strict_gateway_refuses_response_format_until_the_connection_leaves_it_out(emulator, connection):
    """OpenAI itself, played by the emulator: gpt-image models refuse response_format as unknown."""
    emulator.configure(refused_fields=["response_format"])
    with pytest.raises(BetterTokenBadRequestError, match="Unknown parameter: 'response_format'") as info:
        BetterTokenHook().edit_image("x", [PNG])
    assert 'set the extra {"omit_fields": ["response_format"]}' in str(info.value)
    assert emulator.stats()["paid"] == 0

    result = BetterTokenHook(connection(extra={"omit_fields": ["response_format"]})).edit_image("x", [PNG])

    assert result.png.startswith(b"\x89PNG")
    sent = emulator.stats()["requests"][-1]["fields"]
    assert "response_format" not in sent
    assert sent["output_format"] == "png" and sent["model"] == "gpt-image-2"
