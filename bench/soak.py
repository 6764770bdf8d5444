"""The soak: the fault suite's faults, at random, for minutes, then the Jepsen-style set check.

A persistent Mosquitto and `meter serve` run while a QoS 1 publisher streams events; every few
seconds one fault strikes: SIGKILL or SIGTERM of the daemon, SIGTERM or SIGKILL of the broker, or
a broker frozen past the daemon's keepalive. At the end: lost (PUBACKed, not stored), lost among
what the broker had saved (all but those PUBACKed in the 4 s before a broker SIGKILL),
unexpected, double counted.
Run by hand (the CI variants are tests/faults/):

    python bench/soak.py                          # 10 minutes, every fault
    python bench/soak.py --minutes 60 --rate 2000 --faults daemon-kill,broker-kill
"""

from __future__ import annotations

import argparse
import itertools
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import Run, results_arg, table  # noqa: E402

from tests.conftest import Broker, free_port  # noqa: E402
from tests.faults.harness import (  # noqa: E402
    Daemon,
    Probe,
    Publisher,
    event,
    in_background,
    set_check,
    settle_stored,
    stored_ids,
)

FAULTS = ("daemon-kill", "daemon-term", "broker-term", "broker-kill", "broker-stall")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1500.0, help="events per second")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset")
    parser.add_argument("--every", type=float, nargs=2, default=(2.0, 8.0), metavar=("MIN", "MAX"),
                        help="seconds between faults (uniform)")
    parser.add_argument("--autosave", choices=("on_changes", "every_second"),
                        default="every_second", help="Mosquitto snapshot policy")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", help="results JSON (default bench/results/soak.json)")
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault {unknown[0]!r} (known: {', '.join(FAULTS)})")
    run = Run("soak", {k: v for k, v in vars(args).items() if k != "out"})
    rng = random.Random(args.seed)

    workdir = Path(tempfile.mkdtemp(prefix="meter-soak-"))
    workdir.chmod(0o777)  # the broker drops to the mosquitto user
    extra = "autosave_on_changes false" if args.autosave == "every_second" else ""
    broker = Broker(port=free_port(), workdir=workdir / "broker", extra_conf=extra,
                    persistence=True)
    broker.workdir.mkdir()
    broker.start()
    daemon = Daemon(broker, workdir / "meter", "soak/meter", settings={"METER_KEEPALIVE": "2s"})
    daemon.start()
    publisher = Publisher(broker, "soak/meter")
    stop = threading.Event()
    counter = itertools.count()
    thread = in_background(
        lambda: publisher.publish_many((event(i) for i in counter), rate=args.rate, stop=stop),
        "publisher")
    probe = Probe(daemon, ("meter_events_duplicate_total",))
    struck: Counter[str] = Counter()
    duplicates = 0
    at_risk: set[tuple[str, str]] = set()
    deadline = time.monotonic() + args.minutes * 60
    try:
        while time.monotonic() < deadline:
            pause = time.monotonic() + rng.uniform(*args.every)
            while time.monotonic() < pause:
                probe.scrape()
                time.sleep(0.1)
            fault = rng.choice(faults)
            struck[fault] += 1
            print(f"{time.strftime('%H:%M:%S')} {fault} (published {len(publisher.sent)})",
                  flush=True)
            if fault.startswith("daemon"):
                if fault == "daemon-kill":
                    daemon.kill()
                else:
                    code = daemon.terminate(timeout=10)
                    if code != 0:
                        struck["daemon-term-nonzero-exit"] += 1
                duplicates += int(probe.last.get("meter_events_duplicate_total", 0))
                probe.last.clear()
                daemon.start()
            elif fault == "broker-term":
                broker.stop(signal.SIGTERM)
                broker.start()
            elif fault == "broker-kill":
                snapshot = publisher.acked()
                time.sleep(4)  # Mosquitto saves when more than autosave_interval whole seconds passed: ~2 s
                broker.stop(signal.SIGKILL)
                # What was PUBACKed since the snapshot may not be saved yet: this kill may lose
                # it. Read once the publisher has taken in every PUBACK sent before the kill
                # (nothing new is PUBACKed while the broker is down).
                time.sleep(0.5)
                at_risk |= publisher.acked() - snapshot
                broker.start()
            else:
                broker.pause()
                time.sleep(6)  # three keepalives
                broker.resume()
            daemon.wait_connected(timeout=120)
        stop.set()
        thread.join(60)
        publisher.wait_all_acked(timeout=300)
        acked = publisher.acked()
        settle_stored(daemon.db, len(acked), quiet=15, timeout=600)
        probe.scrape()
        duplicates += int(probe.last.get("meter_events_duplicate_total", 0))
        verdict = set_check(publisher.sent, acked, stored_ids(daemon.db))
    finally:
        stop.set()
        daemon.stop()
        publisher.close()
        broker.stop()
    results = {
        "faults": dict(struck),
        "sent": verdict.sent,
        "acked": verdict.acked,
        "stored": verdict.stored,
        "lost": len(verdict.lost),
        "lost_of_saved": len(verdict.lost - at_risk),
        "unexpected": len(verdict.unexpected),
        "double_counted": len(verdict.double_counted),
        "duplicates_absorbed_at_least": duplicates,
    }
    if verdict.lost - at_risk:
        ids = sorted(int(i[1:]) for _, i in verdict.lost - at_risk if i[1:].isdigit())
        print(f"lost although saved: {ids[:40]}{' ...' if len(ids) > 40 else ''}")
    print(table(["fault", "times"], sorted(struck.items())))
    print(table(["figure", "value"], [(k, v) for k, v in results.items() if k != "faults"]))
    run.save(results, results_arg(args.out, "soak"))
    shutil.rmtree(workdir, ignore_errors=True)
    ok = not (results["lost_of_saved"] or results["unexpected"] or results["double_counted"])
    if "broker-kill" not in faults:
        ok = ok and results["lost"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
