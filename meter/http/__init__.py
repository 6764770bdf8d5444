"""HTTP ingest and the usage API of `meter serve` (`--http-addr`).

    body    a POST body (JSON, a JSON array, NDJSON) as numbered messages
    tokens  the `--http-tokens` file: bearer tokens and the accounts each may use
    commit  group commit: requests in flight together share one transaction
    server  the aiohttp application, run in the daemon's event loop
"""

from __future__ import annotations

from meter.http.server import HttpServer, openapi_text, start_http

__all__ = ["HttpServer", "openapi_text", "start_http"]
