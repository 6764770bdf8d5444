"""The /metrics HTTP server: prometheus_client's WSGI app behind optional TLS and basic auth.

`start_http_server` from prometheus_client has TLS but no authentication; this serves the same
app from a threading WSGI server, checks `Authorization: Basic` in constant time when a username
is set, and never logs requests (a scrape every few seconds is noise, and headers hold secrets).
"""

from __future__ import annotations

import base64
import hmac
import ssl
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

__all__ = ["MetricsServer", "serve_metrics"]

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class MetricsServer(ThreadingMixIn, WSGIServer):
    """A threading WSGI server (one thread per scrape); `shutdown()` and `server_close()` stop it."""

    daemon_threads = True
    allow_reuse_address = True


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log."""


def _basic_auth(app: WsgiApp, username: str, password: str) -> WsgiApp:
    expected = b"Basic " + base64.b64encode(f"{username}:{password}".encode())

    def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        given = str(environ.get("HTTP_AUTHORIZATION", "")).encode("latin-1", "replace")
        if not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="meter"'),
                                                ("Content-Type", "text/plain")])
            return [b"unauthorized\n"]
        return app(environ, start_response)

    return guarded


def serve_metrics(host: str, port: int, registry: CollectorRegistry, *,
                  certfile: Path | None = None, keyfile: Path | None = None,
                  username: str | None = None, password: str | None = None) -> MetricsServer:
    """Serve `registry` on http(s)://host:port/metrics from a background thread. With `certfile`
    (and `keyfile`) it speaks TLS only; with `username`, every request needs basic auth.
    Raises OSError when the address cannot be bound or the certificate cannot be loaded."""
    app: WsgiApp = make_wsgi_app(registry)
    if username is not None:
        app = _basic_auth(app, username, password or "")
    server = make_server(host, port, app, server_class=MetricsServer, handler_class=_SilentHandler)
    if certfile is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
        except (OSError, ssl.SSLError):
            server.server_close()
            raise
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server
