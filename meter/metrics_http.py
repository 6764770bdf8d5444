"""The metrics port: `/metrics` (prometheus_client's WSGI app behind optional TLS and basic
auth), `/healthz` and `/readyz`; any other path is 404.

`start_http_server` from prometheus_client has TLS but no authentication; this serves the same
app from a threading WSGI server, checks `Authorization: Basic` in constant time when a username
is set, and never logs requests (a scrape every few seconds is noise, and headers hold secrets).
`/healthz` (the process answers) and `/readyz` (its store writes and its broker connection are
up, read from its own gauges) need no credentials even with auth on: they reveal one fixed line,
so a container HEALTHCHECK or a load balancer needs no password.
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

__all__ = ["MetricsServer", "readiness", "serve_metrics"]

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


#: Gauges that must be 1 for /readyz, with the reason given when one is not.
_READY_GAUGES = {
    "meter_store_healthy": "store writes are failing (meter_store_healthy 0)",
    "meter_mqtt_connected": "not connected to the MQTT broker (meter_mqtt_connected 0)",
}


def readiness(registry: CollectorRegistry) -> str | None:
    """Why the daemon is not ready, in one line; None when it is. Reads the daemon's own gauges
    and stops collecting once both are seen (they come before the per-pool families)."""
    values: dict[str, float] = {}
    for family in registry.collect():
        if family.name in _READY_GAUGES and family.samples:
            values[family.name] = family.samples[0].value
            if len(values) == len(_READY_GAUGES):
                break
    for name, reason in _READY_GAUGES.items():
        if name not in values:
            return f"starting: {name} is not exported yet"
        if values[name] != 1:
            return reason
    return None


def _text(start_response: StartResponse, status: str, line: str) -> Iterable[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Cache-Control", "no-store")])
    return [f"{line}\n".encode()]


def _route(metrics: WsgiApp, registry: CollectorRegistry) -> WsgiApp:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok")
        if path == "/readyz":
            reason = readiness(registry)
            if reason is None:
                return _text(start_response, "200 OK", "ready")
            return _text(start_response, "503 Service Unavailable", f"not ready: {reason}")
        return _text(start_response, "404 Not Found", "not found: try /metrics, /healthz or /readyz")

    return app


def serve_metrics(host: str, port: int, registry: CollectorRegistry, *,
                  certfile: Path | None = None, keyfile: Path | None = None,
                  username: str | None = None, password: str | None = None) -> MetricsServer:
    """Serve `registry` on http(s)://host:port/metrics, and /healthz and /readyz, from a
    background thread. With `certfile` (and `keyfile`) it speaks TLS only; with `username`,
    /metrics needs basic auth. Raises OSError when the address cannot be bound or the
    certificate cannot be loaded."""
    metrics: WsgiApp = make_wsgi_app(registry)
    if username is not None:
        metrics = _basic_auth(metrics, username, password or "")
    app = _route(metrics, registry)
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
