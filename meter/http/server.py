"""The HTTP API of `meter serve` (`--http-addr`): `POST /v1/events`, the usage and report reads,
`/healthz`, `/readyz` and the OpenAPI document, served by aiohttp in the daemon's event loop.

Events go through the daemon's own `Ingestor.commit` (the MQTT path's validation, dedupe and
store; requests in flight together share one transaction, `meter.http.commit`), and the answer
is written only after that commit: a 200 or 207 means every line it
counts is durable. A line for an account the token may not write is a `tenant_mismatch` row in
the rejected table, as a payload on another tenant's MQTT topic is. No request is logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from meter.config import Settings
from meter.errors import ConfigError
from meter.events import Event, Limits, Rejection, parse, to_us
from meter.http.body import JSON_TYPES, NDJSON_TYPES, UnsupportedMediaType, split
from meter.http.commit import Committer, GroupCommit
from meter.http.tokens import ANYONE, Grant, Tokens, bearer, load_tokens
from meter.metrics import Metrics
from meter.metrics_http import readiness
from meter.store import RejectedMessage
from meter.tracker import PoolView
from rating.contracts import Contracts
from rating.usage import from_us, iso

__all__ = ["HttpApi", "HttpServer", "openapi_text", "start_http"]

log = logging.getLogger("meter.http")

_GRANT: Final = web.RequestKey("grant", Grant)
_MONTH: Final = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
#: How long a stopping daemon lets requests in flight finish their commit and answer.
DRAIN_SECONDS: Final = 3.0


class Ingestor(Committer, Protocol):
    """What the API needs of the daemon's `meter.serve.Ingestor`."""

    contracts: Contracts
    limits: Limits
    metrics: Metrics


def openapi_text() -> str:
    """The OpenAPI document (also committed as docs/openapi.yaml)."""
    return resources.files("meter.http").joinpath("openapi.yaml").read_text(encoding="utf-8")


def _error(status: int, error: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status,
                             headers={"Cache-Control": "no-store", **headers})


class HttpApi:
    """The handlers, over one daemon's ingestor, registry and settings."""

    def __init__(self, settings: Settings, ingestor: Ingestor, registry: CollectorRegistry,
                 tokens: Tokens | None, contracts_text: str) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self.group = GroupCommit(ingestor, settings.batch_max)
        self.registry = registry
        self.tokens = tokens
        self.contracts_text = contracts_text
        self.prefix = settings.topic_prefix

    # --- auth ---------------------------------------------------------------------------------

    @web.middleware
    async def authenticate(self, request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
        """`/v1/` needs a known bearer token when there is a tokens file (401 otherwise)."""
        if not request.path.startswith("/v1/"):
            return await handler(request)
        if self.tokens is None:
            request[_GRANT] = ANYONE
            return await handler(request)
        token = bearer(request.headers.get("Authorization"))
        grant = None if token is None else self.tokens.find(token)
        if grant is None:
            return _error(401, "unauthorized",
                          "missing or unknown bearer token (Authorization: Bearer TOKEN)",
                          **{"WWW-Authenticate": 'Bearer realm="meter"'})
        request[_GRANT] = grant
        return await handler(request)

    def _account(self, request: web.Request) -> str | web.Response:
        """The path's account if the token may read it: 403 if not, 404 if it is unknown."""
        account = request.match_info["account"]
        if not request[_GRANT].allows(account):
            return _error(403, "forbidden", f"this token may not read account {account!r}")
        if self.ingestor.contracts.get(account) is None:
            return _error(404, "not_found", f"no account {account!r} in the contracts")
        return account

    # --- POST /v1/events ----------------------------------------------------------------------

    async def post_events(self, request: web.Request) -> web.Response:
        """Validate, commit, then answer with what was accepted, duplicate and rejected."""
        media_type = request.content_type
        if media_type not in NDJSON_TYPES | JSON_TYPES:
            return _error(415, "unsupported_media_type",
                          f"Content-Type {media_type!r}: send application/json (an event or an "
                          "array of events) or application/x-ndjson (one event a line)")
        limit = self.settings.http_max_bytes
        if request.content_length is not None and request.content_length > limit:
            return self._too_large(request.content_length)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(None)
        try:
            messages = split(body, media_type)
        except UnsupportedMediaType:  # pragma: no cover - checked above
            return _error(415, "unsupported_media_type", media_type)
        grant: Grant = request[_GRANT]
        received = datetime.now(UTC)
        received_us = to_us(received)
        events: list[Event] = []
        rejected: list[RejectedMessage] = []
        refused: list[dict[str, Any]] = []
        for number, payload in messages:
            outcome = self._judge(payload, grant, received)
            if isinstance(outcome, Rejection):
                account = grant.only_account or outcome.account
                topic = f"{self.prefix}/{account}/events" if account else f"http:{number}"
                rejected.append(RejectedMessage(received_us, topic, account, outcome.reason,
                                                outcome.detail, payload))
                refused.append({"line": number, "reason": outcome.reason,
                                "detail": outcome.detail})
            else:
                events.append(outcome)
        fresh = await self.group.commit(events, rejected, received_us)
        if fresh is None:
            return _error(503, "unavailable", "the store is failing and the daemon is stopping: "
                          "nothing of this request was stored; send it again",
                          **{"Retry-After": "5"})
        answer = {"accepted": len(fresh), "duplicates": len(events) - len(fresh),
                  "rejected": refused}
        return web.json_response(answer, status=207 if refused else 200,
                                 headers={"Cache-Control": "no-store"})

    def _too_large(self, size: int | None) -> web.Response:
        given = "" if size is None else f"{size} bytes is "
        return _error(413, "too_large", f"{given}over the {self.settings.http_max_bytes}-byte "
                      "limit of one request (--http-max-bytes): send fewer events per request")

    def _judge(self, payload: bytes, grant: Grant, received: datetime) -> Event | Rejection:
        """`parse` as on MQTT; an account the token may not write is `tenant_mismatch`, judged
        before `unknown_account` so a token learns nothing of other tenants."""
        contracts, limits = self.ingestor.contracts, self.ingestor.limits
        only = grant.only_account
        if only is not None:
            return parse(payload, contracts=contracts, received_at=received, topic_account=only,
                         limits=limits)
        outcome = parse(payload, contracts=contracts, received_at=received, limits=limits)
        account = outcome.account
        if account is None and isinstance(outcome, Rejection) and outcome.reason == "unknown_account":
            account = _payload_account(payload)
        if account is not None and not grant.allows(account):
            allowed = ", ".join(sorted(grant.accounts or ()))
            return Rejection("tenant_mismatch", f"payload account {account!r} is not one this "
                             f"token may write ({allowed})")
        return outcome

    # --- reads --------------------------------------------------------------------------------

    async def usage(self, request: web.Request) -> web.Response:
        """The live view of one account: the same snapshot the gauges are read from."""
        account = self._account(request)
        if isinstance(account, web.Response):
            return account
        metrics = self.ingestor.metrics
        if not metrics.tracks(account):
            return _error(503, "tracked_elsewhere", f"account {account!r} is tracked by another "
                          "member of the cluster: ask that one (its /metrics has the gauges)")
        views = [v for v in metrics.pool_views() if v.account == account]
        first = views[0] if views else None
        period = (None if first is None or not first.period_end_us else
                  {"start": iso(from_us(first.period_start_us)),
                   "end": iso(from_us(first.period_end_us))})
        as_of = max((v.at_us for v in views), default=0)
        doc = {"account": account, "period": period,
               "as_of": iso(from_us(as_of)) if as_of else None,
               "pools": [_pool(v) for v in views]}
        return web.json_response(doc, headers={"Cache-Control": "no-store"})

    async def report(self, request: web.Request) -> web.Response:
        """`meter report --period P --account A` (JSON), rated in a thread of its own."""
        account = self._account(request)
        if isinstance(account, web.Response):
            return account
        period = request.match_info["period"]
        if not _MONTH.fullmatch(period):
            return _error(400, "bad_period", f"period {period!r}: expected YYYY-MM")
        text = await asyncio.to_thread(asyncio.run, _report(
            self.settings.db, self.ingestor.contracts, self.contracts_text, period, account))
        return web.Response(text=text, content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def healthz(self, _: web.Request) -> web.Response:
        """The process answers."""
        return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})

    async def readyz(self, _: web.Request) -> web.Response:
        """Its store writes and broker connection are up (the metrics port's /readyz rule)."""
        reason = readiness(self.registry)
        if reason is None:
            return web.json_response({"status": "ready"}, headers={"Cache-Control": "no-store"})
        return web.json_response({"status": "not_ready", "reason": reason}, status=503,
                                 headers={"Cache-Control": "no-store"})

    async def openapi(self, _: web.Request) -> web.Response:
        """The OpenAPI document this server implements."""
        return web.Response(text=openapi_text(), content_type="application/yaml")

    def app(self) -> web.Application:
        """The aiohttp application (the body limit is aiohttp's own, answered as 413)."""
        app = web.Application(middlewares=[self.authenticate],
                              client_max_size=self.settings.http_max_bytes)
        app.router.add_post("/v1/events", self.post_events)
        app.router.add_get("/v1/accounts/{account}/usage", self.usage)
        app.router.add_get("/v1/accounts/{account}/reports/{period}", self.report)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/openapi.yaml", self.openapi)
        return app


def _payload_account(payload: bytes) -> str | None:
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    account = doc.get("account") if isinstance(doc, dict) else None
    return account if isinstance(account, str) else None


def _pool(v: PoolView) -> dict[str, Any]:
    """One pool's row, named as the issue names it; each value is its gauge's."""
    return {
        "pool": v.pool,
        "model": v.model,
        "active_users": v.active_users,
        "licensed": v.licensed,
        "excess_users": v.excess,
        "period_peak": v.peak_users,
        "period_peak_at": iso(from_us(v.peak_at_us)) if v.peak_at_us else None,
        "billable_overage_seats": v.billable_overage,
        "grace_remaining_seconds": v.grace_remaining_s,
    }


async def _report(db: Path | str, contracts: Contracts, contracts_text: str, month: str,
                  account: str) -> str:
    from meter.report import make_report, render_json  # noqa: PLC0415 - the rating stack loads only when used
    from meter.store import open_store  # noqa: PLC0415 - as above

    async with await open_store(db) as store:
        report = await make_report(store, contracts, contracts_text, month, accounts=[account],
                                   charts=False)
    return render_json(report)


class HttpServer:
    """The bound server; `serve(stop)` runs until stop, then drains in-flight requests."""

    def __init__(self, runner: web.AppRunner) -> None:
        self.runner = runner

    async def serve(self, stop: asyncio.Event) -> None:
        """Wait for stop, then stop accepting and let requests in flight answer."""
        try:
            await stop.wait()
        finally:
            await self.runner.cleanup()

    async def close(self) -> None:
        """Stop at once (a failed start)."""
        await self.runner.cleanup()


async def start_http(settings: Settings, *, ingestor: Ingestor, registry: CollectorRegistry
                     ) -> HttpServer | None:
    """Bind `--http-addr` (None when it is not set); a `ConfigError` when it cannot be bound or
    the tokens file is bad."""
    if settings.http_addr is None:
        return None
    tokens = load_tokens(settings.http_tokens) if settings.http_tokens is not None else None
    contracts_text = (settings.contracts.read_text(encoding="utf-8")
                      if settings.contracts is not None else "")
    api = HttpApi(settings, ingestor, registry, tokens, contracts_text)
    runner = web.AppRunner(api.app(), access_log=None, handle_signals=False,
                           shutdown_timeout=DRAIN_SECONDS)
    await runner.setup()
    host, port = settings.http_addr
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"--http-addr {host}:{port}: cannot listen: "
                          f"{exc.strerror or exc}") from None
    auth = (f"{len(tokens.grants)} bearer tokens from {settings.http_tokens}" if tokens
            else "no tokens (loopback only)")
    log.info("HTTP API on http://%s:%d (POST /v1/events, usage, reports): %s", host, port, auth)
    return HttpServer(runner)
