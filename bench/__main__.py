"""One bench command, one table: every bench at a size that fits 15 minutes on 2 cores.

Each row is a figure beside the ceiling measured in the same run, its target and whether it is
met.

    python -m bench                       # every row (bench/run does the same)
    python -m bench --quick               # a tiny smoke size: the plumbing, not the figures
    python -m bench --only ingest,report  # some benches (names below)
    python -m bench --median A.json B.json C.json   # medians of kept runs, nothing run
    python -m bench --rows-from A.json    # a kept run's rows again by this code's rules

Each bench runs as its own process (`python bench/NAME.py ... --out TMP.json`, as a developer
runs it), so one bench's memory or threads never weigh on the next; its results JSON is read back
and turned into rows. Where the issue's full size (10M events, 1,000 accounts, 1M sessions) does
not fit the 15 minutes, the row's size column says the size it ran at. A bench that fails gives
rows marked `failed` with its last stderr line; the others still run.

Writes bench/results/table-<UTC timestamp>.json: every row, the machine (cores, CPU, RAM, Python,
SQLite, Mosquitto, PostgreSQL), the load average before and after, and each bench's own results.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MOSQUITTO, PYTHON, RESULTS, ROOT, machine, table

BENCH = ROOT / "bench"

# --- targets and rows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a row must reach: `of` is "figure" or "ratio", `op` one of >=, <=, <."""

    of: str
    op: str
    value: float
    unit: str = ""

    def met(self, figure: float | None, ratio: float | None) -> bool | None:
        """True or False, or None when the figure (or ratio) it is about was not measured."""
        x = figure if self.of == "figure" else ratio
        if x is None or math.isnan(x):  # nothing measured
            return None
        if self.op == ">=":
            return x >= self.value
        if self.op == "<=":
            return x <= self.value
        if self.op == "<":
            return x < self.value
        raise ValueError(f"unknown target operator {self.op!r}")

    def text(self) -> str:
        if self.of == "ratio":
            return f"ratio {self.op} {_num(self.value)}"
        return f"{self.op} {_num(self.value)}{' ' + self.unit if self.unit else ''}"


@dataclass
class Row:
    """One line of the table. `ratio` is figure / ceiling unless the bench states its own."""

    bench: str
    path: str
    size: str
    figure: float | None
    unit: str
    ceiling: float | None = None
    ceiling_unit: str = ""
    ceiling_what: str = ""
    ratio: float | None = None
    target: Target | None = None
    note: str = ""
    failed: bool = False
    met: bool | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.ratio is None and self.figure is not None and self.ceiling:
            self.ratio = self.figure / self.ceiling
        self.met = None if self.target is None or self.failed else self.target.met(self.figure,
                                                                                   self.ratio)

    def cells(self) -> tuple[str, str, str, str, str, str, str]:
        figure = "-" if self.figure is None else f"{_num(self.figure)} {self.unit}".strip()
        ceiling = "-"
        if self.ceiling is not None:
            ceiling = f"{_num(self.ceiling)} {self.ceiling_unit or self.unit}".strip()
            if self.ceiling_what:
                ceiling += f" ({self.ceiling_what})"
        ratio = "-" if self.ratio is None else f"{self.ratio:.2f}"
        target = "-" if self.target is None else self.target.text()
        return (self.path, self.size, figure, ceiling, ratio, target, met_text(self))

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["target"] = None if self.target is None else {**asdict(self.target),
                                                          "text": self.target.text()}
        doc["met"] = met_text(self)
        return doc


def met_text(row: Row) -> str:
    """yes / no; `-` for a row without a target (a ceiling, for reference); `failed` or
    `not measured` when there is no figure to judge."""
    if row.failed:
        return "failed"
    if row.target is None:
        return "-"
    if row.met is None:
        return "not measured"
    return "yes" if row.met else "no"


def _num(x: float) -> str:
    """1,234 from 1,000; 123; 12.3; 1.23 and 0.12 (trailing zeros dropped); 0.0012 below 0.1."""
    if math.isnan(x):
        return "nan"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}".removesuffix(".0")
    if abs(x) >= 0.1 or x == 0:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{x:.2g}"


HEADERS = ("path", "size", "figure", "ceiling", "ratio", "target", "met")


def render(rows: Sequence[Row]) -> str:
    """The table, with each row's note underneath it."""
    return table(HEADERS, [r.cells() for r in rows])


def notes(rows: Sequence[Row]) -> str:
    return "\n".join(f"  {r.path}: {r.note}" for r in rows if r.note)


def markdown(rows: Sequence[Row]) -> str:
    """The same table in Markdown, for docs/performance.md and the README."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r.cells()) + " |" for r in rows]
    return "\n".join(lines)


# --- each bench: its sizes and how its results become rows ----------------------------------------


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def _size(n: int, unit: str, full: int | None = None) -> str:
    """'200k events' or, below the issue's size, '1M rows (target size 10M)'."""
    def short(v: int) -> str:
        if v >= 1_000_000 and v % 100_000 == 0:
            return f"{v / 1_000_000:g}M"
        if v >= 1000 and v % 100 == 0:
            return f"{v / 1000:g}k"
        return f"{v:,}"
    text = f"{short(n)} {unit}"
    return text + (f" (issue: {short(full)})" if full is not None and n < full else "")


#: Entries of a bench/ingest.py round that are not client subscribers: the ceiling, the meter,
#: latency; `source_*` are the meter's own sources without a commit (shown in a note).
_NOT_CLIENTS = {"round", "raw", "meter", "latency"}
#: What bench/ingest.py names its best deferred-ack client (the ceiling the meter is held to).
_BEST_CLIENT = "codec_min"


def ingest_rows(doc: dict[str, Any]) -> list[Row]:
    res, params = doc["results"], doc["params"]
    rounds: list[dict[str, Any]] = res["rounds"]
    size = _size(params["events"], "events") + f", {params['accounts']:,} accounts"

    def rate(name: str) -> float | None:
        got = [r[name]["per_s"] for r in rounds if isinstance(r.get(name), dict)]
        return _median(got) if got else None

    keys = {k for r in rounds for k in r} - _NOT_CLIENTS
    raw, meter = rate("raw"), rate("meter")
    clients = {k: v for k in keys if not k.startswith("source_") and (v := rate(k)) is not None}
    sources = {k: v for k in keys if k.startswith("source_") and (v := rate(k)) is not None}
    best = (_BEST_CLIENT if _BEST_CLIENT in clients
            else max(clients, key=lambda k: clients[k]) if clients else None)
    best_rate = clients[best] if best else None
    if best == _BEST_CLIENT:
        client_note = ("the mqtt5 codec on a bare asyncio Protocol, PUBACKs of each read sent "
                       "after it: the best deferred-ack client bench/ingest.py measures")
        others = sorted(k for k in clients if k != best)
        if others:
            client_note += "; also " + ", ".join(f"{k} {_num(clients[k])}/s" for k in others)
    elif best:
        client_note = (f"{best}, the best of {', '.join(sorted(clients))}: no deferred-ack client "
                       "in this bench/ingest.py")
    else:
        client_note = "no client subscriber in this run"
    implementation = {r["meter"].get("source") for r in rounds
                      if isinstance(r.get("meter"), dict)} - {None}
    meter_what = f" ({', '.join(sorted(implementation))} source)" if implementation else ""
    meter_note = ("; ".join(f"{k} (the meter's source, no commit) {_num(v)}/s"
                            for k, v in sorted(sources.items())))
    rows = [
        Row("ingest", "ingest MQTT: raw-socket subscriber (the wire)", size, raw, "events/s",
            note="hand-written QoS 1 subscriber, PUBACK per read: the machine's ceiling"),
        Row("ingest", f"ingest MQTT: best deferred-ack client ({best or '-'})", size, best_rate,
            "events/s", raw, ceiling_what="raw", note=client_note),
        Row("ingest", f"meter serve{meter_what} vs the best client", size, meter, "events/s",
            best_rate, ceiling_what=best or "", target=Target("ratio", ">=", 0.8),
            note=meter_note),
        Row("ingest", "meter serve events/s (commit, then ack)", size, meter, "events/s", raw,
            ceiling_what="raw", target=Target("figure", ">=", 40_000, "events/s")),
    ]
    lat = [r["latency"] for r in rounds if isinstance(r.get("latency"), dict)]
    if lat:
        p50 = _median([x["p50_ms"] for x in lat])
        rows.append(Row("ingest", f"ingest p99 latency at {params['latency_rate']:,.0f} events/s",
                        _size(params["latency_events"], "events"),
                        _median([x["p99_ms"] for x in lat]), "ms",
                        target=Target("figure", "<", 100, "ms"),
                        note=f"publish to commit; p50 {_num(p50)} ms"))
    return rows


def store_rows(doc: dict[str, Any]) -> list[Row]:
    rows = []
    for v in doc["results"]["variants"]:
        size = _size(doc["params"]["rows"], "rows", 10_000_000) + f", {v['ids']}"
        what = "the shipped schema" if v["variant"] == "store" else f"variant {v['variant']}"
        replay = v["added_on_replay_of_stored"]
        rows.append(Row("store", f"SQLite insert with dedupe ({what}): last tenth vs first", size,
                        v["last_tenth_rows_per_s"], "rows/s", v["first_tenth_rows_per_s"],
                        ceiling_what="first tenth", target=Target("ratio", ">=", 0.8),
                        note=f"batches of {doc['params']['batch']:,}, WAL, synchronous=FULL; "
                             f"whole run {_num(v['rows_per_s'])} rows/s; "
                             f"replay of stored rows added {replay}"))
        rows.append(Row("store", f"SQLite bytes written per row ({what}), last tenth", size,
                        v["last_tenth_written_bytes_per_row"], "B/row",
                        target=Target("figure", "<", 2000, "B/row"),
                        note=f"CPU {v['last_tenth_cpu_us_per_row']} us/row in the last tenth; "
                             f"database {v['db_mb']} MB"))
    return rows


def tracker_rows(doc: dict[str, Any]) -> list[Row]:
    res = doc["results"]
    worst = max(res["bytes_per_session"], res["bytes_per_session_after_heartbeats"])
    hb = res["heartbeat_us_per_event"]
    return [Row("tracker", "tracker bytes per open session (tracemalloc)",
                _size(res["sessions"], "sessions", 1_000_000) + f", {res['accounts']:,} accounts",
                worst, "B", target=Target("figure", "<=", 200, "B"),
                note=f"after logins {_num(res['bytes_per_session'])} B, after heartbeats "
                     f"{_num(res['bytes_per_session_after_heartbeats'])} B; login "
                     f"{_num(res['login_us_per_event'])} us/event, heartbeat "
                     f"{_num(_median(hb) if isinstance(hb, list) else hb)} us/event")]


def report_rows(doc: dict[str, Any]) -> list[Row]:
    res, params = doc["results"], doc["params"]
    size = (_size(params["accounts"], "accounts", 1000) + f", {res['events_stored']:,} events"
            + ("" if params["days"] == 30 else f", {params['days']} day"
               + ("s" if params["days"] != 1 else "")))
    ceiling = res["ceiling_best_s"]
    ceiling_what = f"plain read, {res['workers']} worker{'s' if res['workers'] != 1 else ''}"
    rows = [Row("report", "meter report JSON vs load ceiling", size, res["json_best_s"], "s",
                ceiling, ceiling_what=ceiling_what, ratio=res["json_vs_ceiling"],
                note="whole `meter report` process, best of "
                     f"{params['repeat']}; the ceiling reads the six rated columns")]
    if "all_formats_s" in res:
        rows.append(Row("report", f"meter report {res['all_formats']} in one run vs load ceiling",
                        size, min(res["all_formats_s"]), "s", ceiling, ceiling_what=ceiling_what,
                        ratio=res["all_vs_ceiling"], target=Target("ratio", "<=", 1.5)))
    if "html_vs_json" in res:
        rows.append(Row("report", "meter report HTML vs JSON", size, res["html_best_s"], "s",
                        res["json_best_s"], ceiling_what="JSON", ratio=res["html_vs_json"],
                        target=Target("ratio", "<=", 2.0)))
    if "pdf_best_s" in res:
        rows.append(Row("report", "PDF invoice of one account", f"1 account ({res['pdf_account']})",
                        res["pdf_best_s"], "s", target=Target("figure", "<=", 2.0, "s"),
                        note="whole `meter report --format pdf --account` process"))
    return rows


def http_rows(doc: dict[str, Any]) -> list[Row]:
    rounds, params = doc["results"]["rounds"], doc["params"]
    http = _median([r["http"]["per_s"] for r in rounds])
    mqtt = _median([r["mqtt"]["per_s"] for r in rounds])
    return [Row("http", "HTTP ingest vs MQTT ingest", _size(params["events"], "events")
                + f", requests of {params['batch']}", http, "events/s", mqtt,
                ceiling_what="MQTT", ratio=_median([r["http_of_mqtt"] for r in rounds]),
                target=Target("ratio", ">=", 0.5),
                note=f"aiohttp client, {params['concurrency']} requests in flight; answer p99 "
                     f"{_num(_median([r['http']['p99_ms'] for r in rounds]))} ms")]


def pg_rows(doc: dict[str, Any]) -> list[Row]:
    rows = []
    for r in doc["results"]["insert"]:
        rows.append(Row("pg", "PostgreSQL Store.add vs COPY", _size(r["rows"], "rows", 10_000_000),
                        r["add_rows_per_s"], "rows/s", r["copy_rows_per_s"],
                        ceiling_what="binary COPY", ratio=r["add_of_copy"],
                        target=Target("figure", ">=", 40_000, "rows/s"),
                        note=f"server {doc['results']['server_version'].split()[0]}; the target is "
                             "item 1's 40,000 events/s, which the store must take; last tenth "
                             f"{_num(r['add_rows_per_s_by_tenth'][-1])} rows/s; replay added "
                             f"{r['replay_added']}"))
    return rows


def rating_rows(doc: dict[str, Any]) -> list[Row]:
    res, params = doc["results"], doc["params"]
    return [Row("rating", "rating vs np.argsort of the timestamps",
                _size(params["events"], "events") + f", {params['accounts']:,} accounts",
                min(res["rate_pools_s"]), "s", min(res["argsort_s"]), ceiling_what="argsort",
                ratio=res["ratio_best"], target=Target("ratio", "<=", 3.0),
                note="target from the rating issue (docs/performance.md), not issue 22")]


def ingest_file_rows(doc: dict[str, Any]) -> list[Row]:
    res = doc["results"]
    best = max(res["runs"], key=lambda r: r["ratio"])
    return [Row("ingest_file", "meter ingest of a file vs executemany",
                _size(res["lines"], "lines"), best["meter_rows_per_s"], "rows/s",
                best["ceiling_rows_per_s"], ceiling_what="executemany", ratio=best["ratio"],
                target=Target("ratio", ">=", res.get("target_ratio", 0.5)),
                note="target from the file-ingest issue (docs/performance.md), not issue 22")]


@dataclass(frozen=True)
class Bench:
    """A bench script, its arguments at the 15-minute and the smoke size, its rows."""

    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    rows: Callable[[dict[str, Any]], list[Row]]
    what: str
    needs: Callable[[], str | None] = lambda: None  # why it cannot run here, or None


def _no_postgres() -> str | None:
    sys.path.insert(0, str(ROOT))
    from tests.pgserver import find_bin

    return None if find_bin() else "no PostgreSQL server binaries (tests/pgserver.py)"


def _no_mosquitto() -> str | None:
    return None if Path(MOSQUITTO).exists() else f"no Mosquitto at {MOSQUITTO}"


#: In the order they run; sizes chosen so the whole table takes ~15 minutes on 2 cores.
BENCHES: dict[str, Bench] = {b.name: b for b in (
    Bench("ingest", "ingest",
          ("--events", "200000", "--rounds", "1", "--latency-events", "50000",
           "--latency-rate", "5000"),
          ("--events", "2000", "--rounds", "1", "--latency-events", "1000",
           "--latency-rate", "5000"),
          ingest_rows, "MQTT ingest: raw socket, best client, meter serve, latency",
          _no_mosquitto),
    Bench("http", "http_ingest", ("--events", "50000", "--rounds", "1"),
          ("--events", "2000", "--rounds", "1"), http_rows, "HTTP ingest against MQTT ingest",
          _no_mosquitto),
    Bench("store", "store_index", ("--rows", "1000000", "--variants", "store", "--ids", "uuid4"),
          ("--rows", "5000", "--variants", "store", "--ids", "uuid4"), store_rows,
          "SQLite insert with dedupe as the table grows"),
    Bench("pg", "store_pg", ("--rows", "300000", "--accounts", "0"),
          ("--rows", "3000", "--accounts", "0"), pg_rows,
          "PostgreSQL Store.add against COPY", _no_postgres),
    Bench("tracker", "tracker", ("--sessions", "1000000", "--accounts", "1000",
                                 "--heartbeat-rounds", "1"),
          ("--sessions", "2000", "--accounts", "10", "--heartbeat-rounds", "1"), tracker_rows,
          "tracker memory per open session"),
    Bench("report", "report", ("--accounts", "100", "--days", "30", "--repeat", "2"),
          ("--accounts", "3", "--days", "1", "--repeat", "1"), report_rows,
          "meter report: load ceiling, JSON, all formats, HTML, PDF"),
    Bench("rating", "rating", ("--events", "10000000", "--accounts", "1000", "--repeat", "2"),
          ("--events", "20000", "--accounts", "10", "--repeat", "1"), rating_rows,
          "rating against np.argsort"),
    Bench("ingest_file", "ingest_file", ("--accounts", "1000", "--days", "3", "--repeat", "1"),
          ("--accounts", "3", "--agents", "2", "--days", "1", "--repeat", "1"),
          ingest_file_rows, "meter ingest of a file against executemany"),
)}


def failed_rows(bench: Bench, why: str) -> list[Row]:
    return [Row(bench.name, f"{bench.name}: {bench.what}", "-", None, "", note=why, failed=True)]


# --- running ------------------------------------------------------------------------------------


def _has_pdf() -> bool:
    return importlib.util.find_spec("weasyprint") is not None


def arguments(bench: Bench, quick: bool) -> list[str]:
    args = list(bench.quick if quick else bench.full)
    if bench.name == "report" and _has_pdf():
        args.append("--pdf")
    return args


def run_bench(bench: Bench, quick: bool, work: Path) -> tuple[dict[str, Any] | None, str, float]:
    """Run one bench as its own process; (its results JSON or None, why not, seconds)."""
    why = bench.needs()
    if why:
        return None, f"not run: {why}", 0.0
    out = work / f"{bench.name}.json"
    log = work / f"{bench.name}.log"
    cmd = [PYTHON, str(BENCH / f"{bench.script}.py"), *arguments(bench, quick), "--out", str(out)]
    print(f"[{time.strftime('%H:%M:%S')}] {bench.name}: {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False,
                              timeout=3600)
    seconds = time.perf_counter() - t
    if done.returncode != 0 or not out.exists():
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        return None, f"exit {done.returncode}: {tail[-1] if tail else 'no output'}", seconds
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc, "", seconds


def _version(cmd: list[str], pattern: str) -> str | None:
    try:
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    found = re.search(pattern, text.stdout + text.stderr)
    return found.group(1) if found else None


def machine_full() -> dict[str, Any]:
    """_common.machine() plus the versions of the servers the benches start."""
    doc = machine()
    doc.pop("loadavg", None)  # the table keeps its own, before and after
    doc["mosquitto"] = _version([MOSQUITTO, "-h"], r"mosquitto version (\S+)")
    pg_bin = None
    try:
        sys.path.insert(0, str(ROOT))
        from tests.pgserver import find_bin

        pg_bin = find_bin()
    except ImportError:
        pass
    doc["postgresql"] = (_version([str(pg_bin / "postgres"), "--version"], r"\(PostgreSQL\) (\S+)")
                         if pg_bin else None)
    return doc


def rows_of(bench: Bench, doc: dict[str, Any] | None, why: str) -> list[Row]:
    """The rows of one bench's results, or one failed row saying why there are none."""
    if doc is None:
        return failed_rows(bench, why)
    try:
        return bench.rows(doc)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        return failed_rows(bench, f"results not understood: {type(e).__name__} {e}")


def rederive(path: Path) -> int:
    """`--rows-from`: the rows of an earlier table JSON again, from the benches' results it
    keeps, by this code's rules (nothing is run); the file is rewritten with them."""
    doc = json.loads(path.read_text())
    rows = table_rows(path)
    doc["rows"] = [r.as_json() for r in rows]
    doc["markdown"] = markdown(rows)
    doc["rows_derived"] = {"at": datetime.now(UTC).isoformat(timespec="seconds"),
                           "git_commit": machine()["git_commit"]}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(render(rows))
    if any(r.note for r in rows):
        print("\n" + notes(rows))
    print(f"\nrewrote {path}")
    return 1 if any(r.failed for r in rows) else 0


def table_rows(path: Path) -> list[Row]:
    """The rows of a table JSON, derived from the benches' results it keeps."""
    doc = json.loads(path.read_text())
    rows: list[Row] = []
    for name, entry in doc["benches"].items():
        rows += rows_of(BENCHES[name], entry if "results" in entry else None,
                        entry.get("error") or "no results")
    return rows


def median_rows(runs: Sequence[Sequence[Row]]) -> list[Row]:
    """One row per path over several runs: the median figure, ceiling and ratio (the median of
    each run's own ratio, not the ratio of the medians), met judged on those medians; the note
    lists each run's figure. A path failed in every run stays failed."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for rows in runs:
        for r in rows:
            groups.setdefault((r.bench, r.path), []).append(r)

    def med(values: list[float | None]) -> float | None:
        got = [v for v in values if v is not None and not math.isnan(v)]
        return _median(got) if got else None

    out = []
    for group in groups.values():
        first, ok = group[0], [r for r in group if not r.failed]
        if not ok:
            out.append(first)
            continue
        sizes = sorted({r.size for r in ok})
        out.append(Row(first.bench, first.path, " / ".join(sizes), med([r.figure for r in ok]),
                       first.unit, med([r.ceiling for r in ok]), first.ceiling_unit,
                       first.ceiling_what, med([r.ratio for r in ok]), first.target,
                       note=f"median of {len(ok)} of {len(group)} runs; figures "
                            + " / ".join("-" if r.figure is None else _num(r.figure)
                                         for r in group)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--only", metavar="NAME[,NAME]",
                    help=f"run only these benches: {', '.join(BENCHES)}")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke size (figures meaningless)")
    ap.add_argument("--out", help="results JSON (default bench/results/table-<UTC timestamp>.json; "
                    "with --quick, the same name in the temp folder)")
    ap.add_argument("--rows-from", metavar="TABLE.json", type=Path,
                    help="run nothing: derive the rows of an earlier table JSON again from the "
                         "benches' results it keeps (after a change to how rows are read), "
                         "rewriting the file")
    ap.add_argument("--median", metavar="TABLE.json", type=Path, nargs="+",
                    help="run nothing: print the median table of several earlier runs (the "
                         "table and its Markdown; with --out, also their rows as JSON)")
    args = ap.parse_args(argv)
    for kept in [args.rows_from] if args.rows_from else args.median or []:
        try:
            json.loads(kept.read_text())["benches"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not a bench table JSON"
            print(f"{kept}: {why}", file=sys.stderr)
            return 2
    if args.rows_from:
        return rederive(args.rows_from)
    if args.median:
        medians = median_rows([table_rows(p) for p in args.median])
        print(render(medians) + "\n\n" + notes(medians) + "\n\n" + markdown(medians))
        if args.out:
            Path(args.out).write_text(json.dumps({
                "bench": "table-median", "runs": [str(p) for p in args.median],
                "rows": [r.as_json() for r in medians], "markdown": markdown(medians)},
                indent=2) + "\n")
        return 0
    names = list(BENCHES) if not args.only else [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown bench(es) {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    mach = machine_full()
    rows: list[Row] = []
    benches: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-table-") as tmp:
        for name in names:
            bench = BENCHES[name]
            doc, why, seconds = run_bench(bench, args.quick, Path(tmp))
            got = rows_of(bench, doc, why)
            rows += got
            benches[name] = {"seconds": round(seconds, 1), "command": arguments(bench, args.quick),
                             "error": why or None,
                             **({k: doc[k] for k in ("params", "results", "machine")}
                                if doc else {})}
            print(render(got), flush=True)
    load_after = [round(x, 2) for x in os.getloadavg()]
    total = time.perf_counter() - t0
    print(f"\n{'QUICK (smoke size) ' if args.quick else ''}bench table, {started:%Y-%m-%d %H:%M} "
          f"UTC, {total / 60:.1f} min; {mach['cores']} cores {mach['cpu_model']}, "
          f"{mach['memory_mb'] / 1024:.0f} GB, Python {mach['python']}, SQLite {mach['sqlite']}, "
          f"Mosquitto {mach['mosquitto']}, PostgreSQL {mach['postgresql']}, {mach['git_commit']}; "
          f"load before {' '.join(map(str, load_before))}, after {' '.join(map(str, load_after))}\n")
    print(render(rows))
    if any(r.note for r in rows):
        print("\n" + notes(rows))
    stamp = f"table-{started:%Y%m%dT%H%M%SZ}"
    out = (Path(args.out) if args.out
           else Path(tempfile.gettempdir()) / f"{stamp}-quick.json" if args.quick
           else RESULTS / f"{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "bench": "table", "quick": args.quick, "only": names,
        "started": started.isoformat(timespec="seconds"), "seconds": round(total, 1),
        "machine": mach, "loadavg_before": load_before, "loadavg_after": load_after,
        "rows": [r.as_json() for r in rows], "markdown": markdown(rows), "benches": benches,
    }, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
