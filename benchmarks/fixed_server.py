"""A loopback stand-in that answers every edit at once with the same prepared body.

Run as its own process, so that its memory and CPU never count as the client's:
``python benchmarks/fixed_server.py BODY_FILE`` prints the port it listens on.
"""

from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    body = Path(sys.argv[1]).read_bytes()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, payload: bytes) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:
            self._answer(body)

        def do_GET(self) -> None:
            self._answer(b'{"object": "list", "data": [{"id": "gpt-image-2"}]}')

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
