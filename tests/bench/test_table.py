"""`python -m bench`'s table code with fixed numbers: targets met or not, ratios, the rows each
bench's results become, the text and Markdown tables, a failing bench. No bench runs here (the
benches themselves are smoke-tested in test_bench_smoke.py) and nothing is timed."""

from __future__ import annotations

import importlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
table = importlib.import_module("bench.__main__")
Row, Target = table.Row, table.Target


@pytest.mark.parametrize(("target", "figure", "ratio", "met"), [
    (("ratio", ">=", 0.8), 1.0, 0.8, True),
    (("ratio", ">=", 0.8), 1.0, 0.79, False),
    (("figure", ">=", 40_000), 40_000.0, None, True),
    (("figure", ">=", 40_000), 39_999.0, 2.0, False),
    (("figure", "<", 100), 100.0, None, False),
    (("figure", "<", 100), 99.9, None, True),
    (("figure", "<=", 200), 200.0, None, True),
    (("ratio", "<=", 1.5), 9.0, 1.51, False),
    (("ratio", "<=", 1.5), 9.0, None, None),
    (("figure", "<", 100), math.nan, None, None),
])
def test_a_target_is_met_or_not_or_not_measured(target: tuple[str, str, float], figure: float,
                                                ratio: float | None, met: bool | None) -> None:
    assert met is Target(*target).met(figure, ratio)


def test_an_unknown_operator_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown target operator '=='"):
        Target("figure", "==", 1).met(1.0, None)


def test_the_ratio_is_figure_over_ceiling_unless_the_bench_states_it() -> None:
    row = Row("ingest", "meter serve", "200k events", 12_000.0, "events/s", 16_000.0,
              ceiling_what="aiomqtt", target=Target("ratio", ">=", 0.8))
    assert 0.75 == row.ratio
    assert row.met is False
    assert ("meter serve", "200k events", "12,000 events/s", "16,000 events/s (aiomqtt)", "0.75",
            "ratio >= 0.8", "no") == row.cells()
    stated = Row("report", "json", "100 accounts", 11.5, "s", 5.0, ratio=2.2)
    assert 2.2 == stated.ratio
    assert ("json", "100 accounts", "11.5 s", "5 s", "2.20", "-", "-") == stated.cells()


def test_rows_without_target_figure_or_run() -> None:
    ceiling_only = Row("ingest", "raw", "200k events", 90_462.6, "events/s")
    assert (None, "-") == (ceiling_only.met, table.met_text(ceiling_only))
    unmeasured = Row("ingest", "p99", "1k events", None, "ms", target=Target("figure", "<", 100))
    assert "not measured" == table.met_text(unmeasured)
    failed = Row("pg", "pg", "-", None, "", target=Target("figure", ">=", 1), failed=True)
    assert "failed" == table.met_text(failed)
    assert "failed" == failed.as_json()["met"]


@pytest.mark.parametrize(("x", "text"), [
    (90_462.6, "90,463"), (1000.0, "1,000"), (184.4, "184"), (78.23, "78.2"), (12.0, "12"),
    (2.27, "2.27"), (2.0, "2"), (0.8, "0.8"), (0.0036, "0.0036"), (0.0, "0"), (math.nan, "nan"),
])
def test_numbers_in_the_table(x: float, text: str) -> None:
    assert text == table._num(x)


def test_sizes_name_the_issue_size_when_below_it() -> None:
    assert "1M rows (issue: 10M)" == table._size(1_000_000, "rows", 10_000_000)
    assert "10M rows" == table._size(10_000_000, "rows", 10_000_000)
    assert "200k events" == table._size(200_000, "events")
    assert "955,124 lines" == table._size(955_124, "lines")


def test_the_text_and_markdown_tables() -> None:
    rows = [Row("tracker", "tracker bytes", "300k sessions", 184.4, "B",
                target=Target("figure", "<=", 200, "B")),
            Row("http", "HTTP | MQTT", "50k events", 3_000.0, "events/s", 12_000.0,
                target=Target("ratio", ">=", 0.5))]
    assert table.render(rows).splitlines() == [
        "path           size           figure          ceiling          ratio  target        met",
        "-------------  -------------  --------------  ---------------  -----  ------------  ---",
        "tracker bytes  300k sessions  184 B           -                -      <= 200 B      yes",
        "HTTP | MQTT    50k events     3,000 events/s  12,000 events/s   0.25  ratio >= 0.5  no ",
    ]
    assert table.markdown(rows).splitlines() == [
        "| path | size | figure | ceiling | ratio | target | met |",
        "|---|---|---|---|---|---|---|",
        "| tracker bytes | 300k sessions | 184 B | - | - | <= 200 B | yes |",
        "| HTTP \\| MQTT | 50k events | 3,000 events/s | 12,000 events/s | 0.25 | ratio >= 0.5 | no |",
    ]


def _ingest_doc(**clients: float) -> dict[str, Any]:
    round_: dict[str, Any] = {"round": 1, "raw": {"per_s": 90_000.0},
                              "meter": {"per_s": 45_000.0, "source": "codec"},
                              "meter_variants": [], "latency": {"p50_ms": 12.0, "p99_ms": 78.0}}
    round_ |= {name: {"per_s": rate} for name, rate in clients.items()}
    return {"params": {"events": 200_000, "accounts": 1000, "latency_rate": 5000.0,
                       "latency_events": 50_000},
            "results": {"rounds": [round_]}}


def test_ingest_rows_hold_meter_serve_to_the_best_deferred_ack_client() -> None:
    """codec_min is the bench's best deferred-ack client even where the meter's own source
    without a commit (source_codec) takes more."""
    rows = table.ingest_rows(_ingest_doc(aiomqtt=16_000.0, codec_min=55_000.0,
                                         source_codec=60_000.0))
    got = [(r.path, r.figure, r.ceiling, r.met) for r in rows]
    assert got == [
        ("ingest MQTT: raw-socket subscriber (the wire)", 90_000.0, None, None),
        ("ingest MQTT: best deferred-ack client (codec_min)", 55_000.0, 90_000.0, None),
        ("meter serve (codec source) vs the best client", 45_000.0, 55_000.0, True),
        ("meter serve events/s (commit, then ack)", 45_000.0, 90_000.0, True),
        ("ingest p99 latency at 5,000 events/s", 78.0, None, True),
    ]
    assert rows[1].note.endswith("; also aiomqtt 16,000/s")
    assert "source_codec (the meter's source, no commit) 60,000/s" == rows[2].note


def test_ingest_rows_without_a_deferred_ack_client_say_so() -> None:
    rows = table.ingest_rows(_ingest_doc(aiomqtt=16_000.0))
    assert "aiomqtt, the best of aiomqtt: no deferred-ack client in this bench/ingest.py" \
        == rows[1].note
    assert (45_000.0 / 16_000.0, True) == (rows[2].ratio, rows[2].met)


def test_a_missing_or_foreign_table_file_is_one_line_and_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--median` and `--rows-from` name the file they cannot read, in one line, and run nothing."""
    (tmp_path / "other.json").write_text('{"rows": []}')
    assert 2 == table.main(["--median", str(tmp_path / "none.json")])
    assert f"{tmp_path / 'none.json'}: No such file or directory\n" == capsys.readouterr().err
    assert 2 == table.main(["--rows-from", str(tmp_path / "other.json")])
    assert f"{tmp_path / 'other.json'}: not a bench table JSON\n" == capsys.readouterr().err


def test_rows_from_an_earlier_table_are_derived_again(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"rows": [], "benches": {
        "tracker": {"params": {}, "results": {
            "sessions": 1_000_000, "accounts": 1000, "bytes_per_session": 184.0,
            "bytes_per_session_after_heartbeats": 184.0, "login_us_per_event": 30.0,
            "heartbeat_us_per_event": [25.0]}},
        "pg": {"error": "not run: no PostgreSQL"}}}))
    assert 1 == table.main(["--rows-from", str(path)])  # a failed row: exit 1
    doc = json.loads(path.read_text())
    assert [(r["path"], r["size"], r["figure"], r["met"]) for r in doc["rows"]] == [
        ("tracker bytes per open session (tracemalloc)", "1M sessions, 1,000 accounts", 184.0,
         "yes"),
        ("pg: PostgreSQL Store.add against COPY", "-", None, "failed")]
    assert "not run: no PostgreSQL" == doc["rows"][1]["note"]
    assert doc["markdown"].splitlines()[2].startswith("| tracker bytes per open session")


def test_store_tracker_report_pg_http_rows() -> None:
    store = table.store_rows({"params": {"rows": 1_000_000, "batch": 1000}, "results": {
        "variants": [{"variant": "store", "ids": "uuid4", "rows": 1_000_000, "rows_per_s": 15_000.0,
                      "first_tenth_rows_per_s": 40_000.0, "last_tenth_rows_per_s": 12_000.0,
                      "last_tenth_written_bytes_per_row": 19_500, "last_tenth_cpu_us_per_row": 50,
                      "exact": True, "added_on_replay_of_stored": 0, "db_mb": 300.0}]}})
    assert [(r.size, r.figure, r.ratio, r.met) for r in store] == [
        ("1M rows (issue: 10M), uuid4", 12_000.0, 0.3, False),
        ("1M rows (issue: 10M), uuid4", 19_500, None, False)]
    tracker = table.tracker_rows({"results": {
        "sessions": 300_000, "accounts": 1000, "bytes_per_session": 184.0,
        "bytes_per_session_after_heartbeats": 201.0, "login_us_per_event": 30.0,
        "heartbeat_us_per_event": [25.0]}})
    assert [(r.size, r.figure, r.met) for r in tracker] == [
        ("300k sessions (issue: 1M), 1,000 accounts", 201.0, False)]
    report = table.report_rows({"params": {"accounts": 100, "days": 30, "repeat": 1}, "results": {
        "events_stored": 1_040_000, "ceiling_best_s": 4.0, "workers": 2, "json_best_s": 11.5,
        "json_vs_ceiling": 2.88, "all_formats": "json,csv,html", "all_formats_s": [15.0],
        "all_vs_ceiling": 3.75, "html_best_s": 14.0, "html_vs_json": 1.22, "pdf_best_s": 1.9,
        "pdf_account": "acme-0001"}})
    assert [(r.path, r.ratio, r.met) for r in report] == [
        ("meter report JSON vs load ceiling", 2.88, None),
        ("meter report json,csv,html in one run vs load ceiling", 3.75, False),
        ("meter report HTML vs JSON", 1.22, True),
        ("PDF invoice of one account", None, True)]
    assert "100 accounts (issue: 1k), 1,040,000 events" == report[0].size
    pg = table.pg_rows({"results": {"server_version": "15.20 (Debian)", "insert": [
        {"rows": 300_000, "add_rows_per_s": 14_000, "copy_rows_per_s": 300_000,
         "add_of_copy": 0.047, "add_rows_per_s_by_tenth": [15_000, 13_000], "replay_added": 0}]}})
    assert [(r.figure, r.ratio, r.met) for r in pg] == [(14_000, 0.047, False)]
    http = table.http_rows({"params": {"events": 50_000, "batch": 100, "concurrency": 8},
                            "results": {"rounds": [
                                {"http": {"per_s": 6_000.0, "p99_ms": 50.0},
                                 "mqtt": {"per_s": 12_000.0}, "http_of_mqtt": 0.5}]}})
    assert [(r.figure, r.ceiling, r.ratio, r.met) for r in http] == [(6_000.0, 12_000.0, 0.5, True)]


def test_a_bench_that_fails_gives_a_failed_row(tmp_path: Path) -> None:
    missing = table.Bench("nothing", "no_such_bench", (), (), table.store_rows, "a missing bench")
    doc, why, _ = table.run_bench(missing, False, tmp_path)
    assert doc is None
    assert re.fullmatch(r"exit 2: .*can't open file .*no_such_bench\.py.*", why), why
    (row,) = table.failed_rows(missing, why)
    assert ("nothing: a missing bench", "-", "-", "-", "-", "-", "failed") == row.cells()
    absent = table.Bench("absent", "store_index", (), (), table.store_rows, "x",
                         lambda: "no server here")
    assert (None, "not run: no server here", 0.0) == table.run_bench(absent, False, tmp_path)


@pytest.mark.parametrize("name", list(table.BENCHES))
def test_every_bench_takes_the_flags_the_table_passes(name: str) -> None:
    """Each size flag of both sizes is one the script's --help lists (so the table cannot rot
    when a bench's options change)."""
    bench = table.BENCHES[name]
    help_text = subprocess.run([sys.executable, str(ROOT / "bench" / f"{bench.script}.py"),
                                "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                               check=True).stdout
    flags = {a for a in (*bench.full, *bench.quick, "--out") if a.startswith("--")}
    if name == "report":
        flags.add("--pdf")
    assert flags <= set(re.findall(r"--[a-z][a-z-]*", help_text))


def test_unknown_bench_names_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        table.main(["--only", "ingest,nope"])
    assert 2 == exit_.value.code
    assert "unknown bench(es) nope; known: ingest, http, store, pg, tracker, report, rating, " \
           "ingest_file" in capsys.readouterr().err


def test_the_median_of_several_runs() -> None:
    """Median figure, ceiling and ratio per path (the ratio is the median of each run's own),
    met judged on them; a run where the bench failed is left out and named in the note."""
    def run(figure: float | None, ceiling: float, failed: bool = False) -> list[Any]:
        return [Row("http", "HTTP vs MQTT", "50k events", figure, "events/s", ceiling,
                    target=Target("ratio", ">=", 0.5), failed=failed)]
    rows = table.median_rows([run(3_000.0, 12_000.0), run(9_000.0, 10_000.0),
                              run(5_000.0, 11_000.0), run(None, 1.0, failed=True)])
    (row,) = rows
    assert (5_000.0, 11_000.0, 5_000.0 / 11_000.0, False) == (row.figure, row.ceiling, row.ratio,
                                                              row.met)
    assert "median of 3 of 4 runs; figures 3,000 / 9,000 / 5,000 / -" == row.note
    (all_failed,) = table.median_rows([run(None, 1.0, failed=True)] * 2)
    assert "failed" == table.met_text(all_failed)
