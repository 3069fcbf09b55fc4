"""An HTTP proxy in front of the REST catalog that lets a test decide what happens to table
commits (hold them, answer late, never answer); everything else goes straight through.

Subclasses override `commit`, which runs on the proxy's request thread for every table commit
(`POST .../namespaces/{ns}/tables/{table}`) and returns whether to forward it and answer."""

from __future__ import annotations

import http.client
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

COMMIT = re.compile(r"^/v1/(?:[^ ]*/)?namespaces/[^/]+/tables/[^/?]+(?:\?.*)?$")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"}


class CatalogProxy:
    def __init__(self, target: str, name: str = "catalog-proxy") -> None:
        parts = urlsplit(target)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                proxy.handle(self)

            do_POST = do_DELETE = do_HEAD = do_PUT = do_GET  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def commit(self, path: str, headers: dict[str, str], body: bytes) -> bool:
        """A table commit arrived: True forwards it and answers; False leaves it unanswered."""
        return True

    def committed(self) -> None:
        """A table commit was forwarded and answered."""

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        is_commit = request.command == "POST" and bool(COMMIT.match(request.path))
        if is_commit and not self.commit(request.path, headers, body):
            request.close_connection = True
            return
        status, response_headers, response_body = self.forward(request.command, request.path, headers, body)
        if is_commit:
            self.committed()
        request.send_response(status)
        for key, value in response_headers:
            if key.lower() not in HOP_BY_HOP:
                request.send_header(key, value)
        request.send_header("Content-Length", str(len(response_body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(response_body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
