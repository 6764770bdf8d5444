"""CLI error paths: each bad input is exit 2 (or 1 for other failures) and ONE line on stderr."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from meter.cli import main
from meter.store import open_store
from tests.contracts_toml import account

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "sample_sessions" / "contracts.toml"

ZERO_TIMEOUT = account("acme", session_timeout="0s")


def _empty_db(path: Path) -> Path:
    async def make() -> None:
        store = await open_store(path)
        await store.close()

    asyncio.run(make())
    return path


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    return code, err.splitlines()


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["report", "--db", "{db}", "--contracts", "{zero}", "--period", "2026-11"], 2,
         "key 'session_timeout': must be longer than 0s"),
        (["report", "--db", "{db}", "--contracts", "{missing}", "--period", "2026-11"], 2,
         "missing.toml"),
        (["ingest", "{missing}", "--db", "{db}", "--contracts", str(CONTRACTS)], 2,
         "missing.toml"),
        (["ingest", "x.jsonl", "--db", "{db}"], 2, "--contracts"),
        (["report", "--db", "{db}", "--contracts", str(CONTRACTS), "--period", "November"], 2,
         "November"),
        (["nonsense"], 2, "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_the_right_exit_code(
    argv: list[str], code: int, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad flags, missing files and bad contracts give the documented code and one stderr line
    that names what was wrong."""
    zero = tmp_path / "zero.toml"
    zero.write_text(ZERO_TIMEOUT)
    subs = {"{db}": str(_empty_db(tmp_path / "m.db")), "{zero}": str(zero),
            "{missing}": str(tmp_path / "missing.toml")}
    argv = [subs.get(a, a) for a in argv]
    got, lines = _run(argv, capsys)
    assert code == got
    assert 1 == len(lines), lines
    assert needle in lines[0]


def test_report_out_under_a_file_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An --out that cannot be a directory fails with one line naming the path, not a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    got, lines = _run(["report", "--db", str(_empty_db(tmp_path / "m.db")), "--contracts", str(CONTRACTS),
                       "--period", "2026-11", "--format", "csv", "--out", str(blocker / "sub")],
                      capsys)
    assert got in (1, 2)
    assert 1 == len(lines), lines
    assert str(blocker) in lines[0]


def test_python_dash_m_meter_prints_the_version() -> None:
    """`python -m meter` is the same CLI as the console script."""
    out = subprocess.run([sys.executable, "-m", "meter", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("meter ")


def test_every_serve_setting_is_a_flag() -> None:
    """README: every settings key is also a `meter serve` flag, except the password (a flag
    would put it in the process list); and serve forwards each flag it parses."""
    from meter import config, daemon
    from meter.cli import build_parser

    serve_parser = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    dests = {a.dest for a in serve_parser._actions} - {"help"}
    flags = {a.option_strings[0] for a in serve_parser._actions} - {"-h"}
    keys = {s.name for s in config.SETTINGS} - {"password"}
    assert keys | {"config"} == dests
    assert {config.setting(k).flag_name for k in keys} | {"--config"} == flags
    assert dests == set(daemon.FLAG_KEYS)


def _ingest_argv(tmp_path: Path, *extra: str) -> list[str]:
    events = tmp_path / "empty.jsonl"
    events.write_text("")
    return ["ingest", str(events), "--db", str(tmp_path / "i.db"), "--contracts", str(CONTRACTS),
            *extra]


BARE_FIVE = '--max-future: 5 is not a duration: write a unit, e.g. "5s" or "5m"'


@pytest.mark.parametrize("command", ["serve", "ingest"])
def test_a_bare_number_max_future_is_the_same_one_line_for_serve_and_ingest(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--max-future 5` is refused by serve and ingest alike: exit 2, the same line after the
    command's prefix, saying what to write."""
    argv = (["serve", "--broker", "mqtt://127.0.0.1:1", "--max-future", "5"]
            if command == "serve" else _ingest_argv(tmp_path, "--max-future", "5"))
    assert (2, [f"meter {command}: {BARE_FIVE}"]) == _run(argv, capsys)


@pytest.mark.parametrize(("env", "toml", "line"), [
    ({"METER_MAX_FUTURE": "5"}, None,
     'METER_MAX_FUTURE: 5 is not a duration: write a unit, e.g. "5s" or "5m"'),
    ({"METER_BATCH_WAIT": "0.5"}, None,
     'METER_BATCH_WAIT: 0.5 is not a duration: write a unit, e.g. "0.5s"'),
    ({}, "batch_wait = 5",
     '{conf}: key \'batch_wait\': 5 is not a duration: write a unit, e.g. "5s" or "5m"'),
    ({}, 'finalize_after = "0"',
     '{conf}: key \'finalize_after\': 0 is not a duration: write a unit, e.g. "0s" or "0m"'),
])
def test_serve_refuses_bare_number_durations_from_env_and_file(  # noqa: PLR0917 - pytest passes fixtures by name
    env: dict[str, str], toml: str | None, line: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bare number in a METER_* variable or the settings file is exit 2 and one line naming
    the variable or the file and key."""
    conf = tmp_path / "meter.toml"
    argv = ["serve", "--broker", "mqtt://127.0.0.1:1"]
    if toml is not None:
        conf.write_text(f"[serve]\n{toml}\n")
        argv += ["--config", str(conf)]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert (2, ["meter serve: " + line.format(conf=conf)]) == _run(argv, capsys)


def test_max_future_with_a_unit_works_for_serve_and_ingest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--max-future 5s` is five seconds to serve (its settings) and to ingest (exit 0)."""
    from meter import config, serve

    seen: list[config.Settings] = []

    async def run(settings: config.Settings, stop: object) -> None:
        seen.append(settings)

    monkeypatch.setattr(serve, "run", run)
    assert 0 == main(["serve", "--broker", "mqtt://127.0.0.1:1", "--max-future", "5s"])
    assert [5.0] == [s.max_future for s in seen]
    assert 0 == main(_ingest_argv(tmp_path, "--max-future", "5s"))
    assert "" == capsys.readouterr().err


def test_publish_timeout_takes_a_duration(capsys: pytest.CaptureFixture[str]) -> None:
    """`meter publish --timeout` is a duration like every other: a bare number is exit 2."""
    argv = ["publish", "-", "--broker", "mqtt://127.0.0.1:1", "--timeout", "60"]
    assert (2, ['meter publish: --timeout: 60 is not a duration: write a unit, e.g. "60s" or '
                '"60m"']) == _run(argv, capsys)


@pytest.mark.parametrize(("error", "code"), [
    ("meter.errors:MeterError", 1),
    ("meter.errors:StoreError", 1),
    ("meter.errors:ConfigError", 2),
    ("meter.errors:UsageError", 2),
    ("rating.errors:RatingError", 1),
    ("rating.errors:ContractError", 2),
    ("rating.errors:PolicyViolation", 2),
])
def test_each_error_class_carries_its_exit_code_and_main_uses_it(
    error: str, code: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 for bad input or usage, 1 for any other failure: the class says, `main` obeys."""
    import importlib

    from meter import cli

    module, name = error.split(":")
    cls = getattr(importlib.import_module(module), name)
    assert code == cls.exit_code

    def fail(args: object) -> int:
        raise cls("what went wrong")

    monkeypatch.setattr(cli, "_handler", lambda command: fail)
    assert (code, ["meter quote: what went wrong"]) == _run(
        ["quote", "--contracts", "c.toml", "--account", "a", "--pool", "p", "--quantity", "1"],
        capsys)


@pytest.mark.parametrize(("line", "expected"), [
    ("meter rep", {"report"}),
    ("meter report --fo", {"--format", "--force"}),
    ("meter ingest --as", {"--as-of"}),
])
def test_the_shell_completes_commands_and_flags(tmp_path: Path, line: str,
                                                expected: set[str]) -> None:
    """What a shell with `register-python-argcomplete meter` asks for, the CLI answers (argcomplete's
    protocol: the request in COMP_LINE/COMP_POINT, the words separated by vertical tabs)."""
    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
    proc = subprocess.run([sys.executable, "-m", "meter"], env=env, capture_output=True,
                          text=True, check=False, timeout=60)
    assert 0 == proc.returncode, proc.stderr
    assert expected == {word.strip() for word in out.read_text().split("\v") if word.strip()}
