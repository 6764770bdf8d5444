"""`meter serve` from the command line: resolve the settings, install signal handlers that only
set the stop event, and run the lone daemon (`meter.serve.run`) or, with `--slots`, one member
of a cluster (`meter.cluster.node.run_cluster`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from meter.config import FLAG_KEYS, load_settings

__all__ = ["run_cli"]


def run_cli(args: argparse.Namespace) -> int:
    """`meter serve`: resolve settings, install signal handlers that set the stop event, run."""
    flags = {key: getattr(args, key, None) for key in FLAG_KEYS}
    settings = load_settings(flags, os.environ)
    logging.basicConfig(level=settings.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mqtt").setLevel(logging.ERROR)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if settings.slots is None:
            from meter.serve import run  # noqa: PLC0415 - each command loads only what it runs

            await run(settings, stop)
        else:
            from meter.cluster.node import run_cluster  # noqa: PLC0415 - psycopg for a cluster only

            await run_cluster(settings, stop)

    asyncio.run(main())
    return 0
