"""The HTTP transport under the hook: keepalive sockets, reading an answer as it streams, failure kinds."""

from __future__ import annotations

import socket
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection
from urllib3.exceptions import NewConnectionError

from airflow_bettertoken.protocol.answer_stream import EditAnswerStream
from airflow_bettertoken.protocol.retry import Failure
from airflow_bettertoken.protocol.wire import EditAnswer

# Body chunks of 1 MiB: few Python-level steps for a 33 MB answer, little memory held per step.
_READ_CHUNK = 1 << 20
# TCP keepalive probes keep a request that waits minutes for its image alive behind NAT
# and load balancers, which otherwise drop an idle connection without telling either side.
_KEEPALIVE_OPTIONS = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 20), ("TCP_KEEPCNT", 6))


def _keepalive_socket_options() -> list[tuple[int, int, int]]:
    options = [*HTTPConnection.default_socket_options, (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in _KEEPALIVE_OPTIONS:
        if hasattr(socket, name):  # Linux names; macOS and Windows lack some of them
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


class _KeepAliveAdapter(HTTPAdapter):
    """An HTTPAdapter whose sockets, direct or through a proxy, send TCP keepalive probes."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["socket_options"] = _keepalive_socket_options()
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["socket_options"] = _keepalive_socket_options()
        return super().proxy_manager_for(proxy, **kwargs)


def new_session() -> requests.Session:
    session = requests.Session()
    adapter = _KeepAliveAdapter()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def failure_kind(err: requests.RequestException) -> Failure:
    """Whether a failed attempt may have reached the server (and been billed)."""
    if isinstance(err, requests.ConnectTimeout):
        return Failure.NOT_SENT
    if isinstance(err, requests.ConnectionError) and err.args:
        reason = getattr(err.args[0], "reason", None)
        if isinstance(reason, NewConnectionError):  # refused, unreachable, or no such host
            return Failure.NOT_SENT
    return Failure.MAYBE_BILLED


def read_edit_answer(response: requests.Response, max_pixels: int) -> EditAnswer:
    """Decode a success body as it streams in, so that its base64 text is never held whole."""
    stream = EditAnswerStream(int(response.headers.get("content-length") or 0), max_pixels)
    for chunk in response.iter_content(chunk_size=_READ_CHUNK):
        stream.feed(chunk)
    return stream.finish()
