"""The `meter` command line: parses flags and forwards to each command's `run(args) -> int`.

Commands are imported lazily so `meter ingest` never pays for MQTT or matplotlib. Exit codes:
0 ok, 2 bad usage or bad input, 1 any other failure; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import NoReturn

from meter import __version__
from meter.errors import ConfigError, ContractError, InvalidEvent, MeterError, UsageError
from rating.errors import RatingError

__all__ = ["UsageError", "build_parser", "main", "parse_instant"]


def parse_instant(text: str | None, flag: str) -> datetime:
    """The RFC 3339 time (with an offset) given to `flag`, in UTC; now when it is absent."""
    if text is None:
        return datetime.now(UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag}: expected an RFC 3339 time with offset, got {text!r}") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise UsageError(f"{flag}: {text!r} has no UTC offset (add Z or +HH:MM)")
    return value.astimezone(UTC)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage text is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


#: command -> "module:function"; each function takes the parsed namespace and returns an exit code.
HANDLERS: dict[str, str] = {
    "serve": "meter.serve:run_cli",
    "ingest": "meter.ingest:run",
    "publish": "meter.publish:run",
    "report": "meter.report:run",
    "verify": "meter.report:run_verify",
    "quote": "meter.quote:run_cli",
    "demo": "meter.demo:run",
}


def _add_serve(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("serve", help="run the metering daemon (MQTT -> SQLite -> /metrics)")
    p.add_argument("--config", help="TOML settings file (flags > METER_* env > file > defaults)")
    p.add_argument("--broker", help="broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--db", help="SQLite database path")
    p.add_argument("--contracts", help="contracts TOML file")
    p.add_argument("--metrics-addr", help="HOST:PORT for /metrics (default 127.0.0.1:9464)")
    _add_broker_auth(p)
    p.add_argument("--client-id", help="MQTT client id of the persistent session "
                                       "(default license-meter)")
    p.add_argument("--topic-prefix", help="topics are PREFIX/<account>/events (default meter)")
    p.add_argument("--synchronous", help="SQLite synchronous mode (default FULL)")
    p.add_argument("--batch-max", help="most messages per commit (default 1000)")
    p.add_argument("--batch-wait", help="longest wait to fill a batch, e.g. 5ms (default 5ms)")
    p.add_argument("--max-future", help="how far ahead of receipt an event may be (default 5m)")
    p.add_argument("--tracker-clock", help="live tracker's now: wall (default) or events "
                                           "(latest event time, for fast replays)")
    p.add_argument("--log-level", help="DEBUG, INFO (default), WARNING or ERROR")
    p.add_argument("--max-bytes", help="largest event payload accepted (default 8192)")
    p.add_argument("--receive-maximum", help="messages the broker may have in flight to the meter")
    p.add_argument("--keepalive", help="MQTT keepalive in seconds (a stalled broker is noticed "
                                       "after 1.5x this)")
    p.add_argument("--session-expiry", help="how long the broker keeps the meter's session while "
                                            "it is down (default never)")
    p.add_argument("--reconnect-min", help="first reconnect delay, e.g. 0.5s")
    p.add_argument("--reconnect-max", help="longest reconnect delay (capped, jittered backoff)")
    p.add_argument("--reorder-window", help="how long live gauges wait for late events (default 2s)")
    p.add_argument("--shutdown-timeout", help="bounded drain on SIGTERM before exit")
    p.add_argument("--finalize-after", help="finalize each period this long after it ends "
                                            "(default 1h; 0 = never)")
    p.add_argument("--metrics-cert-file", help="PEM certificate: serve /metrics over TLS only")
    p.add_argument("--metrics-key-file", help="key for --metrics-cert-file (if not in it)")
    p.add_argument("--metrics-username", help="require basic auth on /metrics with this user")
    p.add_argument("--metrics-password-file", help="file holding the /metrics basic auth password")


def _add_broker_auth(p: argparse.ArgumentParser) -> None:
    """Broker credentials and TLS, shared by serve and publish (no --password: see env)."""
    p.add_argument("--username", help="broker username (password: --password-file or "
                                      "METER_PASSWORD)")
    p.add_argument("--password-file", help="file holding the broker password")
    p.add_argument("--ca-file", help="CA certificate(s) for an mqtts:// broker")
    p.add_argument("--cert-file", help="client certificate for an mqtts:// broker")
    p.add_argument("--key-file", help="client key for --cert-file")


def _add_ingest(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("ingest", help="load JSONL event files into the store (same rules as serve)")
    p.add_argument("files", nargs="+", metavar="FILE", help="JSONL files, or - for stdin")
    p.add_argument("--db", required=True, help="SQLite database path")
    p.add_argument("--contracts", required=True, help="contracts TOML file")
    p.add_argument("--as-of", metavar="TS",
                   help="receive time recorded for every line and used for the 'future' check "
                        "(RFC 3339 with offset; default now). For replays of files that lie ahead "
                        "of this machine's clock, e.g. the sample month (November 2026): "
                        "--as-of 2026-12-02T00:00:00Z")
    p.add_argument("--max-future", default="5m", metavar="DURATION",
                   help="how far ahead of receive time an event may be (default 5m)")


def _add_publish(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("publish", help="replay a JSONL file onto the broker at QoS 1")
    p.add_argument("file", metavar="FILE", help="JSONL file, or - for stdin")
    p.add_argument("--broker", required=True, help="broker URL, mqtt://HOST:PORT")
    p.add_argument("--rate", type=float, default=None, metavar="N",
                   help="events per second (default: as fast as the broker takes them)")
    _add_broker_auth(p)
    p.add_argument("--topic-prefix", default=None, help="topic prefix (default meter)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the last acknowledgements (default 60)")


def _add_report(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("report", help="month-end overage report (JSON, CSV, HTML)")
    p.add_argument("--db", required=True, help="SQLite database path")
    p.add_argument("--contracts", required=True, help="contracts TOML file")
    p.add_argument("--period", required=True, metavar="YYYY-MM", help="billing period")
    p.add_argument("--account", help="one account (default: all)")
    p.add_argument("--format", choices=("json", "csv", "html"), default="json")
    p.add_argument("--out", metavar="DIR", help="output directory (JSON to stdout when absent)")
    p.add_argument("--finalize", action="store_true", help="freeze the period's report")
    v = sub.add_parser("verify", help="recompute a report's input hash and compare")
    v.add_argument("report", metavar="REPORT.json")
    v.add_argument("--db", required=True)
    v.add_argument("--contracts", required=True)


def _add_quote(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("quote", help="price a seat order without changing anything")
    p.add_argument("--contracts", required=True, help="contracts TOML file")
    p.add_argument("--account", required=True)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--pool")
    target.add_argument("--addon")
    p.add_argument("--quantity", required=True, type=int, help="the new TOTAL quantity")
    p.add_argument("--at", metavar="TS", help="effective time, RFC 3339 (default now)")


def _add_demo(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on the sample month and show the bill")
    p.add_argument("--out", default="demo-out", metavar="DIR",
                   help="where the database and reports go (default ./demo-out, made fresh)")
    p.add_argument("--no-broker", action="store_true",
                   help="load the sample month with `meter ingest` even if Mosquitto is installed")


#: Commands may register extra flags here (command -> function taking its subparser).
EXTRA_ARGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and docs)."""
    parser = _Parser(prog="meter", description="Exact concurrent-license metering.")
    parser.add_argument("--version", action="version", version=f"meter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_serve, _add_ingest, _add_publish, _add_report, _add_quote, _add_demo):
        add(sub)
    for name, extra in EXTRA_ARGS.items():
        extra(sub.choices[name])
    return parser


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    module_name, func = HANDLERS[command].split(":")
    module = importlib.import_module(module_name)
    handler: Callable[[argparse.Namespace], int] = getattr(module, func)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (tests call this directly)."""
    args = build_parser().parse_args(argv)
    try:
        return _handler(args.command)(args)
    except (UsageError, ConfigError, ContractError, InvalidEvent) as exc:
        print(f"meter {args.command}: {exc}", file=sys.stderr)
        return 2
    except (MeterError, RatingError) as exc:
        print(f"meter {args.command}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A file or socket the command needed: one line naming it, not a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"meter {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"meter {args.command}: interrupted", file=sys.stderr)
        return 130
