"""The `meter import` command line (kept apart from `command` so that building the parser
imports nothing heavy)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["add_arguments"]


def add_arguments(sub: argparse._SubParsersAction[Any], db_type: Callable[[str], Any]) -> None:
    """The `import` command's parser (sub-commands flexlm and asterisk), for `meter.cli`."""
    p = sub.add_parser("import", help="turn FlexLM logs or an Asterisk queue_log into events")
    kinds = p.add_subparsers(dest="source", required=True, parser_class=type(p))
    flex = kinds.add_parser("flexlm", help="FlexLM (FlexNet) license-server debug logs")
    flex.add_argument("logs", nargs="+", metavar="LOG",
                      help="debug logs of ONE license server, oldest first (- for stdin)")
    flex.add_argument("--timezone", required=True, metavar="TZ",
                      help="the license server's time zone (IANA, e.g. Europe/Madrid): the log "
                           "writes local times")
    flex.add_argument("--pool-map", metavar="FILE",
                      help='TOML file of "FEATURE" = "pool" pairs; features not in it are '
                           "skipped and counted (default: each feature is its own pool)")
    ast = kinds.add_parser("asterisk", help="Asterisk queue_log files")
    ast.add_argument("logs", nargs="+", metavar="queue_log", help="queue_log files (- for stdin)")
    ast.add_argument("--pool", help="the pool of every event (default: none; the account's one "
                                    "concurrent pool takes them)")
    for q in (flex, ast):
        q.add_argument("--account", required=True, help="the account the events belong to")
        q.add_argument("--out", metavar="FILE", help="write the events as JSONL (- for stdout)")
        q.add_argument("--db", type=db_type, metavar="PATH|URL",
                       help="ingest the events into this store instead (needs --contracts)")
        q.add_argument("--contracts", metavar="FILE",
                       help="contracts TOML file (with --db; also checks the account's "
                            "session_timeout against the logs)")
        q.add_argument("--as-of", metavar="TS",
                       help="with --db: the receive time recorded (RFC 3339; default now), as "
                            "meter ingest --as-of")
