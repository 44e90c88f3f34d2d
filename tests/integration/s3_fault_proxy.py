"""An HTTP proxy in front of moto's S3 server that fails object uploads on demand, and counts requests.

It is a real server on loopback: boto3 talks to it as to any S3 endpoint.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "host"}


class S3FaultProxy:
    """Forwards everything to ``upstream``; the next ``fail_puts`` object PUTs fail (-1: all of them),
    with a 503 SlowDown or, with ``fail_with_access_denied``, a 403 AccessDenied. Only keys for which
    ``fails_key(key)`` is true fail: by default every key but the provider's own records under
    ``_bettertoken/``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.fail_puts = 0
        self.fail_with_access_denied = False
        self.fails_key: Callable[[str], bool] = lambda key: not key.startswith("_bettertoken/")
        self.failed_puts = 0
        #: The next this-many object PUTs are stored, but their answer is lost: the client sees a 503.
        self.lose_put_answers = 0
        #: Every request that came through, as (method, path with query), in order.
        self.requests: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                proxy.requests.append((self.command, self.path))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                _, _, key = unquote(self.path.lstrip("/").split("?")[0]).partition("/")
                is_object_put = self.command == "PUT" and key != ""
                if is_object_put and proxy.fail_puts != 0 and proxy.fails_key(key):
                    if proxy.fail_puts > 0:
                        proxy.fail_puts -= 1
                    proxy.failed_puts += 1
                    if proxy.fail_with_access_denied:
                        self._reply(403, {"Content-Type": "application/xml"}, ACCESS_DENIED)
                    else:
                        self._reply(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Host"] = self.headers.get("Host", "")
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                reply_headers = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
                conn.close()
                if is_object_put and proxy.lose_put_answers > 0 and proxy.fails_key(key):
                    proxy.lose_put_answers -= 1
                    self._reply(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
                    return
                self._reply(response.status, reply_headers, data)

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() != "content-length" or self.command == "HEAD":
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
