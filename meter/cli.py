# PYTHON_ARGCOMPLETE_OK  (shell completion: `eval "$(register-python-argcomplete meter)"`)
"""The `meter` command line: parses flags and forwards to each command's `run(args) -> int`.

Commands are imported lazily so `meter ingest` never pays for MQTT or the PDF writer. Exit codes:
0 ok, 2 bad usage or bad input, 1 any other failure; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn
from urllib.parse import parse_qsl, urlsplit

from meter import __version__
from meter.config import ENV_PREFIX, SETTINGS, Setting, is_postgres, parse_db, redact, setting
from meter.errors import MeterError
from rating.errors import RatingError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage text is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


#: command -> "module:function"; each function takes the parsed namespace and returns an exit code.
HANDLERS: dict[str, str] = {
    "serve": "meter.daemon:run_cli",
    "ingest": "meter.ingest:run",
    "publish": "meter.publish:run",
    "report": "meter.report:run",
    "verify": "meter.report:run_verify",
    "quote": "meter.quote:run_cli",
    "demo": "meter.demo:run",
    "rejected": "meter.rejected:run",
    "migrate": "meter.migrate:run",
    "import": "meter.importers.command:run",
}

#: The variable every command's `--db` falls back to (as `meter serve`'s setting does).
DB_ENV = ENV_PREFIX + "DB"


def _db_value(text: str) -> Path | str:
    try:
        return parse_db(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_db(p: argparse.ArgumentParser, flag: str = "--db", what: str = "the store",
            *, env: bool = True, dest: str = "db") -> None:
    """A store location flag: a SQLite path (or `sqlite:PATH`) or a PostgreSQL URL; `--db`
    falls back to METER_DB, so a URL with its password need not be in the process list."""
    fallback = (os.environ.get(DB_ENV) or None) if env else None
    p.add_argument(flag, dest=dest, type=_db_value, required=fallback is None, default=fallback,
                   metavar="PATH|URL",
                   help=f"{what}: a SQLite path or a postgresql://USER@HOST:PORT/DB URL"
                        + (f" (or set {DB_ENV})" if env else ""))


def _add_setting(p: argparse.ArgumentParser, s: Setting, *, default: str | None = None) -> None:
    """The flag of setting `s`, its help and metavar as `meter.config.SETTINGS` declares them.
    The value stays a string (None when absent) so that `load_settings` parses every layer alike."""
    p.add_argument(s.flag_name, dest=s.name, default=default, metavar=s.metavar, help=s.help_text)


def _add_serve(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("serve", help="run the metering daemon (MQTT -> SQLite -> /metrics)")
    p.add_argument("--config", metavar="FILE",
                   help="TOML settings file (flags > METER_* env > file > defaults)")
    for s in SETTINGS:
        if s.flag:
            _add_setting(p, s)


def _add_broker_auth(p: argparse.ArgumentParser) -> None:
    """Broker credentials and TLS, as serve takes them (no --password: see METER_PASSWORD)."""
    for name in ("username", "password_file", "ca_file", "cert_file", "key_file"):
        _add_setting(p, setting(name))


def _add_ingest(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("ingest", help="load JSONL event files into the store (same rules as serve)")
    p.add_argument("files", nargs="+", metavar="FILE", help="JSONL files, or - for stdin")
    _add_db(p)
    p.add_argument("--contracts", required=True, help="contracts TOML file")
    p.add_argument("--as-of", metavar="TS",
                   help="receive time recorded for every line and used for the 'future' check "
                        "(RFC 3339 with offset; default now). For replays of files that lie ahead "
                        "of this machine's clock, e.g. the sample month (November 2026): "
                        "--as-of 2026-12-02T00:00:00Z")
    # The same setting as serve's: the same default, grammar and error.
    max_future = setting("max_future")
    _add_setting(p, max_future, default=max_future.default)


def _add_publish(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("publish", help="replay a JSONL file onto the broker at QoS 1")
    p.add_argument("file", metavar="FILE", help="JSONL file, or - for stdin")
    p.add_argument("--broker", required=True, help="broker URL, mqtt://HOST:PORT")
    p.add_argument("--rate", type=float, default=None, metavar="N",
                   help="events per second (default: as fast as the broker takes them)")
    _add_broker_auth(p)
    _add_setting(p, setting("topic_prefix"))
    p.add_argument("--timeout", default="60s", metavar="DURATION",
                   help="how long to wait for the last acknowledgements (default 60s)")


def _add_report(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("report", help="month-end overage report (JSON, CSV, HTML)")
    _add_db(p)
    p.add_argument("--contracts", required=True, help="contracts TOML file")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--period", metavar="YYYY-MM",
                      help="each account's billing period that STARTS in this calendar month "
                           "(an account anchored on the 31st has its November usage under "
                           "the period starting 31 October: --period 2026-10, or --on)")
    when.add_argument("--on", metavar="YYYY-MM-DD",
                      help="each account's billing period containing this date, in the "
                           "account's time zone")
    p.add_argument("--account", help="one account (default: all)")
    p.add_argument("--format", default="json", metavar="FORMATS",
                   help="json, csv, html or pdf (the `pdf` extra), or a comma list "
                        "(json,csv,html): rated once, each written (default json)")
    p.add_argument("--out", metavar="DIR", help="output directory (JSON to stdout when absent)")
    p.add_argument("--finalize", action="store_true", help="freeze the period's report")
    p.add_argument("--finalize-after", metavar="DURATION", default="1h",
                   help="--finalize refuses a period until this long after its end (default 1h)")
    p.add_argument("--force", action="store_true",
                   help="with --finalize: freeze a period that has not ended plus --finalize-after")
    p.add_argument("--as-of", metavar="TS",
                   help="rate a period still running as of TS (RFC 3339 with offset, or 'now'): "
                        "sessions open then count as open up to it, as the live gauges count them")
    v = sub.add_parser("verify", help="recompute a report's input hash and compare")
    v.add_argument("report", metavar="REPORT.json")
    _add_db(v)
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
    p.add_argument("--db", type=_db_value, metavar="PATH|URL",
                   help="the store to load (default DIR/meter.db, made fresh); a PostgreSQL "
                        "database must be empty")


def _add_rejected(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("rejected", help="list, show or reprocess rejected messages")
    p.add_argument("action", choices=("list", "show", "reprocess"),
                   help="list: one line each; show ID: one with its payload; reprocess: move "
                        "the ones valid under the current contracts into the log")
    p.add_argument("id", nargs="?", type=int, metavar="ID", help="for show: the row (list's first column)")
    _add_db(p)
    p.add_argument("--contracts", help="contracts TOML file (required for reprocess)")
    p.add_argument("--account", help="only messages naming this account (payload or topic)")
    p.add_argument("--reason", help="only this reason (unknown_account, schema, ...)")
    p.add_argument("--since", metavar="TS", help="only messages received at or after TS (RFC 3339)")
    # The daemon's settings, so a message is judged as `meter serve` judges it.
    for name in ("topic_prefix", "max_bytes", "max_future"):
        _add_setting(p, setting(name))


def _add_migrate(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("migrate", help="copy a store into another (SQLite <-> PostgreSQL), "
                                       "then verify the copy",
                       description="Copy every event (with its seq and payload), rejected "
                                   "message and finalized report into an empty store, then "
                                   "verify: equal counts and last seq, and every finalized "
                                   "report's input hash recomputed on the copy. Stop meter "
                                   "serve first. Exit 0 verified, 1 a mismatch, 2 bad usage or "
                                   "a target that is not empty.")
    _add_db(p, "--from", "the store to copy", env=False, dest="source")
    # No --force: a merge of two logs cannot keep both arrival orders, and a finalized report's
    # cutoff (a seq) would then name other events. A non-empty target is always refused.
    _add_db(p, "--to", "the store to copy into, empty (a new SQLite file, or a PostgreSQL "
                       "database without meter rows)", env=False, dest="target")
    p.add_argument("--contracts", required=True,
                   help="contracts TOML file (to recompute each finalized report's input hash)")


def _add_import(sub: argparse._SubParsersAction[_Parser]) -> None:
    from meter.importers.args import add_arguments  # noqa: PLC0415 - light, parser only

    add_arguments(sub, _db_value)


#: Commands may register extra flags here (command -> function taking its subparser).
EXTRA_ARGS: dict[str, Callable[[argparse.ArgumentParser], None]] = {}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and docs)."""
    parser = _Parser(prog="meter", description="Exact concurrent-license metering.")
    parser.add_argument("--version", action="version", version=f"meter {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_serve, _add_ingest, _add_publish, _add_report, _add_quote, _add_demo,
                _add_rejected, _add_migrate, _add_import):
        add(sub)
    for name, extra in EXTRA_ARGS.items():
        extra(sub.choices[name])
    return parser


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    module_name, func = HANDLERS[command].split(":")
    module = importlib.import_module(module_name)
    handler: Callable[[argparse.Namespace], int] = getattr(module, func)
    return handler


def _printers(args: argparse.Namespace) -> contextlib.AbstractContextManager[object]:
    """`meter report` writing PDFs: its printer processes (`meter.printer`), started before the
    report's modules are imported, so that WeasyPrint's import on another core is over when the
    first page is ready; the report prints with them (`args.printers`)."""
    formats = [f.strip() for f in str(getattr(args, "format", "")).split(",")]
    if args.command != "report" or "pdf" not in formats:
        return contextlib.nullcontext()
    from meter.printer import Printers, printers_for  # noqa: PLC0415 - only a PDF run needs it

    printers = Printers(printers_for(1 if args.account else 4))
    args.printers = printers
    return printers


def _secrets(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(text, replacement) pairs that hide the passwords of the PostgreSQL URLs among `args`."""
    pairs: list[tuple[str, str]] = []
    for name in ("db", "source", "target"):
        url = getattr(args, name, None)
        if not is_postgres(url):
            continue
        pairs.append((str(url), redact(url)))
        parts = urlsplit(str(url))
        passwords = [parts.password] + [v for k, v in parse_qsl(parts.query) if k == "password"]
        pairs += [(p, "***") for p in passwords if p]
    return pairs


def _say(args: argparse.Namespace, text: str) -> None:
    """One error line on stderr, never with a password from a URL among the arguments (a
    driver's message may quote the connection string)."""
    for secret, shown in _secrets(args):
        text = text.replace(secret, shown)
    print(f"meter {args.command}: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (tests call this directly)."""
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:
        # A shell asking for completions (argcomplete): answer and exit; a plain run never
        # imports it.
        import argcomplete  # noqa: PLC0415

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        with _printers(args):
            return _handler(args.command)(args)
    except (MeterError, RatingError) as exc:
        # Each error class says what it exits with (2 for bad input, 1 otherwise).
        _say(args, str(exc))
        return exc.exit_code
    except sqlite3.DatabaseError as exc:
        # Damage the open did not see (a file past the size it checks whole) met by a query: one
        # line naming the database; exit 2 where SQLite says the file is corrupt.
        code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
        corrupt = code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
        _say(args, f"{getattr(args, 'db', None) or 'the database'}: {exc}")
        return 2 if corrupt else 1
    except OSError as exc:
        # A file or socket the command needed: one line naming it, not a traceback.
        where = f"{exc.filename}: " if exc.filename else ""
        _say(args, f"{where}{exc.strerror or exc}")
        return 1
    except KeyboardInterrupt:
        _say(args, "interrupted")
        return 130
