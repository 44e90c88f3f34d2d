"""An HTTP proxy in front of moto's S3 server that answers as AWS does where moto does not, and counts.

It is a real server on loopback: boto3 talks to it as to any S3 endpoint (path-style, as botocore
addresses an IP endpoint). moto applies no bucket policy and no IAM, so the proxy plays them:

- ``fail_puts``: the next object PUTs fail (-1: all), with a 503 SlowDown or a 403 AccessDenied; only
  keys for which ``fails_key(key)`` is true fail: by default every key but the provider's own records
  under ``_bettertoken/``;
- ``lose_put_answers``: the next object PUTs are stored, but their answer is lost: the client sees a 503;
- ``fail_reads``: the next object HEADs and GETs fail (-1: all) with a 503 SlowDown (throttling);
- ``requester_pays``: a requester-pays bucket: every request without ``x-amz-request-payer: requester``
  is refused with a 403, as AWS refuses it;
- ``require_kms``: a bucket policy that denies uploads without ``x-amz-server-side-encryption: aws:kms``,
  answered with AWS's explicit-deny 403;
- ``no_list_bucket``: a role without ``s3:ListBucket``: LISTs and bucket HEADs answer 403, and so does a
  HEAD or GET of a key that does not exist (where moto answers 404);
- ``ignore_conditional_writes``: an older S3-compatible store that drops ``If-None-Match`` and
  ``If-Match``, so create-only writes overwrite.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Callable
from html import unescape
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
ROLE = "arn:aws:sts::123456789012:assumed-role/airflow-worker/i-0123456789abcdef0"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "host"}


def denied(action: str, resource: str, why: str) -> bytes:
    """AWS's AccessDenied body, as it reads for a role (the message names the action and the resource)."""
    message = f'User: {ROLE} is not authorized to perform: {action} on resource: "{resource}" {why}'
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
        f"<Message>{message}</Message><RequestId>PROXY</RequestId></Error>"
    ).encode()


class S3FaultProxy:
    """Forwards everything to ``upstream``, except what its switches make it answer as AWS would."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.fail_puts = 0
        self.fail_with_access_denied = False
        self.fails_key: Callable[[str], bool] = lambda key: not key.startswith("_bettertoken/")
        self.failed_puts = 0
        #: The next this-many object PUTs are stored, but their answer is lost: the client sees a 503.
        self.lose_put_answers = 0
        self.fail_reads = 0
        #: GETs and HEADs of the keys it is true for are denied (403), as a policy that denies them does.
        self.deny_reads: Callable[[str], bool] = lambda key: False
        self.requester_pays = False
        self.require_kms = False
        self.no_list_bucket = False
        self.ignore_conditional_writes = False
        #: Every request that came through, as (method, path with query), in order.
        self.requests: list[tuple[str, str]] = []
        #: The keys each ``DeleteObjects`` asked to delete (the path names only the bucket), in order.
        self.deleted_keys: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                proxy.requests.append((self.command, self.path))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path, _, query = self.path.lstrip("/").partition("?")
                bucket, _, key = unquote(path).partition("/")
                if self.command == "POST" and "delete" in (q.partition("=")[0] for q in query.split("&")):
                    keys = re.findall(r"<Key>(.*?)</Key>", body.decode())
                    proxy.deleted_keys += [unescape(k) for k in keys]
                is_object_put = self.command == "PUT" and bool(key) and "uploadId" not in query
                if proxy.requester_pays and self.headers.get("x-amz-request-payer") != "requester":
                    self._reply(403, {"Content-Type": "application/xml"}, ACCESS_DENIED)
                    return
                if key and self.command in ("GET", "HEAD") and proxy.deny_reads(key):
                    self._reply(403, {"Content-Type": "application/xml"}, ACCESS_DENIED)
                    return
                if key and self.command in ("GET", "HEAD") and proxy.fail_reads != 0:
                    if proxy.fail_reads > 0:
                        proxy.fail_reads -= 1
                    self._reply(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
                    return
                if is_object_put and proxy.fail_puts != 0 and proxy.fails_key(key):
                    if proxy.fail_puts > 0:
                        proxy.fail_puts -= 1
                    proxy.failed_puts += 1
                    if proxy.fail_with_access_denied:
                        self._reply(403, {"Content-Type": "application/xml"}, ACCESS_DENIED)
                    else:
                        self._reply(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
                    return
                unencrypted = self.headers.get("x-amz-server-side-encryption") != "aws:kms"
                if is_object_put and proxy.require_kms and unencrypted:
                    why = "with an explicit deny in a resource-based policy"
                    body = denied("s3:PutObject", f"arn:aws:s3:::{bucket}/{key}", why)
                    self._reply(403, {"Content-Type": "application/xml"}, body)
                    return
                if proxy.no_list_bucket and not key and self.command in ("GET", "HEAD"):
                    # A bucket HEAD and every LIST need s3:ListBucket on the bucket.
                    why = "because no identity-based policy allows the s3:ListBucket action"
                    self._reply(
                        403,
                        {"Content-Type": "application/xml"},
                        denied("s3:ListBucket", f"arn:aws:s3:::{bucket}", why),
                    )
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if proxy.ignore_conditional_writes and self.command == "PUT":
                    headers = {
                        k: v for k, v in headers.items() if k.lower() not in ("if-none-match", "if-match")
                    }
                headers["Host"] = self.headers.get("Host", "")
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                reply_headers = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
                conn.close()
                if is_object_put and proxy.lose_put_answers > 0 and proxy.fails_key(key):
                    proxy.lose_put_answers -= 1
                    self._reply(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
                    return
                if (
                    proxy.no_list_bucket
                    and key
                    and self.command in ("GET", "HEAD")
                    and response.status == 404
                ):
                    # Without s3:ListBucket, AWS does not say whether a key exists: 403, not 404.
                    self._reply(403, {"Content-Type": "application/xml"}, ACCESS_DENIED)
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
