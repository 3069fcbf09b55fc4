"""An HTTP proxy in front of the REST catalog that lets a test decide what happens to table
commits (hold them, answer late, never answer); everything else goes straight through.

Subclasses override `commit`, which runs on the proxy's request thread for every table commit
(`POST .../namespaces/{ns}/tables/{table}`) and returns whether to forward it and answer.

With `tokens` and/or `clients` it is also a catalog that refuses requests without a valid bearer
token (HTTP 401 with an Iceberg `ErrorModel`, nothing forwarded), as a production catalog behind
OAuth2 does: `tokens` are static bearer tokens it accepts; `clients` (client id -> secret) may
trade their credentials for a fresh token at its OAuth2 token endpoint (`POST /v1/oauth/tokens`,
the REST spec's, or `/oauth2/token`, standing for a separate `oauth2-server-uri`), with the
`client_credentials` grant. `exchanges` records each token request (client id, scope, granted),
`refusals` each refused request, `authorized` the tokens catalog requests carried. The token is
taken off before a request is forwarded to the real catalog."""

from __future__ import annotations

import http.client
import json
import re
import secrets
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

COMMIT = re.compile(r"^/v1/(?:[^ ]*/)?namespaces/[^/]+/tables/[^/?]+(?:\?.*)?$")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"}
# The REST spec's token endpoint, and one standing for a separate `oauth2-server-uri`.
TOKEN_PATHS = ("/v1/oauth/tokens", "/oauth2/token")


class CatalogProxy:
    def __init__(
        self,
        target: str,
        name: str = "catalog-proxy",
        *,
        tokens: Iterable[str] | None = None,
        clients: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(target)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.lock = threading.Lock()
        self.require_token = tokens is not None or clients is not None
        self.valid_tokens: set[str] = set(tokens or ())
        self.clients = dict(clients or {})
        self.exchanges: list[dict[str, Any]] = []
        self.refusals: list[str] = []
        self.authorized: Counter[str] = Counter()
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

    def revoke_tokens(self) -> None:
        """Every token given out or accepted so far stops working (a rotation, an expiry)."""
        with self.lock:
            self.valid_tokens.clear()

    def grant(self, token: str) -> None:
        with self.lock:
            self.valid_tokens.add(token)

    def reply(self, request: BaseHTTPRequestHandler, status: int, document: Mapping[str, Any]) -> None:
        body = json.dumps(document).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def token_request(self, request: BaseHTTPRequestHandler, body: bytes) -> None:
        """OAuth2 client credentials: a fresh access token for a known client and its secret."""
        form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        granted = (
            form.get("grant_type") == "client_credentials"
            and client_id in self.clients
            and secrets.compare_digest(self.clients[client_id], secret)
        )
        token = "issued-" + secrets.token_urlsafe(18) if granted else ""
        with self.lock:
            self.exchanges.append(
                {
                    "path": urlsplit(request.path).path,
                    "client_id": client_id,
                    "scope": form.get("scope"),
                    "granted": granted,
                    "token": token,
                }
            )
            if granted:
                self.valid_tokens.add(token)
        if granted:
            self.reply(request, 200, {"access_token": token, "token_type": "bearer", "expires_in": 3600})
        else:
            self.reply(request, 401, {"error": "invalid_client", "error_description": "unknown client or wrong secret"})

    def authorize(self, request: BaseHTTPRequestHandler, headers: dict[str, str]) -> bool:
        """Whether the request carries a valid bearer token (answered 401 if not); the token is
        taken off `headers`."""
        auth = next((headers.pop(k) for k in list(headers) if k.lower() == "authorization"), "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        with self.lock:
            ok = bool(token) and token in self.valid_tokens
            if ok:
                self.authorized[token] += 1
            else:
                self.refusals.append(f"{request.command} {request.path}")
        if not ok:
            message = "no bearer token" if not token else "the bearer token is not valid"
            self.reply(request, 401, {"error": {"message": message, "type": "NotAuthorizedException", "code": 401}})
        return ok

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if self.require_token:
            if request.command == "POST" and urlsplit(request.path).path in TOKEN_PATHS:
                self.token_request(request, body)
                return
            if not self.authorize(request, headers):
                return
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
