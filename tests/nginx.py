"""A real nginx on loopback in front of a test server: Debian's package, started and stopped by the test.

Its ``proxy_read_timeout`` cuts requests that take longer, as AWS ALB and nginx do at 60 s by default
and Cloudflare at 100 s: nginx answers 504 and closes the upstream connection.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.ports import free_port, wait_for_port

CONFIG = """
daemon off;
master_process off;
worker_processes 1;
error_log {home}/error.log info;
pid {home}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log {home}/access.log;
    client_body_temp_path {home}/body;
    proxy_temp_path {home}/proxy;
    fastcgi_temp_path {home}/fastcgi;
    uwsgi_temp_path {home}/uwsgi;
    scgi_temp_path {home}/scgi;
    client_max_body_size 64m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_read_timeout {read_timeout}s;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


def require_nginx() -> str:
    """The nginx binary; skipped without it, but a failure under ``CI=true``, where it must be there."""
    binary = nginx_binary()
    if binary is None:
        message = "nginx is not installed (Debian: apt-get install nginx)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


class Nginx:
    """nginx listening on 127.0.0.1, proxying to ``upstream_port`` with a read timeout in seconds."""

    def __init__(self, upstream_port: int, read_timeout: float, port: int | None = None) -> None:
        self.binary = require_nginx()
        self.port = port or free_port()
        self.home = Path(tempfile.mkdtemp(prefix="bettertoken-nginx-"))
        config = CONFIG.format(
            home=self.home, port=self.port, upstream=upstream_port, read_timeout=read_timeout
        )
        (self.home / "nginx.conf").write_text(config)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Nginx:
        self.process = subprocess.Popen(
            [
                self.binary,
                "-p",
                str(self.home),
                "-c",
                str(self.home / "nginx.conf"),
                "-e",
                str(self.home / "error.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for_port(self.port, self.process, "nginx", timeout=20)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.home, ignore_errors=True)
