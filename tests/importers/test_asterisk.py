"""Asterisk queue_log lines to events: which lines are logins, logouts and heartbeats, epoch
times, and deterministic ids."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from meter.importers.asterisk import AsteriskCounts, AsteriskImport
from meter.importers.common import Imported


def run(text: str, pool: str | None = None) -> tuple[list[Imported], AsteriskCounts]:
    imp = AsteriskImport("cc", pool)
    imp.feed("queue_log", [line.encode() + b"\n" for line in text.strip("\n").splitlines()])
    return imp.finish()


@pytest.mark.parametrize(("line", "expected"), [
    ("1793606405|NONE|NONE|Agent/1001|AGENTLOGIN|SIP/1001-00000001",
     ("login", "Agent/1001", "2026-11-02T08:00:05+00:00")),
    ("1793606405|NONE|NONE|Agent/1001|AGENTCALLBACKLOGIN|1001@agents",
     ("login", "Agent/1001", "2026-11-02T08:00:05+00:00")),
    ("1793606405|NONE|NONE|Agent/1001|AGENTLOGOFF|SIP/1001-00000001|14400",
     ("logout", "Agent/1001", "2026-11-02T08:00:05+00:00")),
    ("1793606405|NONE|NONE|Agent/1001|AGENTCALLBACKLOGOFF|1001@agents|28800|Autologoff",
     ("logout", "Agent/1001", "2026-11-02T08:00:05+00:00")),
    ("1793606405|1793606400.5|support|SIP/2002|CONNECT|5|1793606400.6|3",
     ("heartbeat", "SIP/2002", "2026-11-02T08:00:05+00:00")),
    ("1793606405|1793606400.5|support|SIP/2002|COMPLETECALLER|5|120|1",
     ("heartbeat", "SIP/2002", "2026-11-02T08:00:05+00:00")),
    ("1793606405|NONE|NONE|Agent/1001|PAUSEALL|",
     ("heartbeat", "Agent/1001", "2026-11-02T08:00:05+00:00")),
    ("1793606405.250000|1793606400.5|support|Agent/1001|RINGNOANSWER|6000",
     ("heartbeat", "Agent/1001", "2026-11-02T08:00:05.250000+00:00")),
    ("1793606405|1793606400.5|support|NONE|ENTERQUEUE||5551230001|1", None),
    ("1793606405|1793606400.5|support|NONE|ABANDON|1|1|45", None),
    ("1793606405|NONE|NONE|NONE|QUEUESTART|", None),
    ("1793606405|NONE|support|SIP/2002|ADDMEMBER|", None),
])
def test_which_lines_become_which_events(line: str, expected: tuple[str, str, str] | None
                                         ) -> None:
    """Agent logins and logoffs (plain and callback) are logins and logouts of the agent,
    lines of an agent at work are heartbeats, caller and queue lines are counted and skipped."""
    events, counts = run(line, "agents")
    got = [(e.type, e.user, e.ts.isoformat()) for e in events]
    assert ([expected] if expected else []) == got
    assert (0 if expected else 1) == counts.other
    assert all(e.pool == "agents" and e.session is None for e in events)


def test_ids_are_deterministic_and_name_the_line() -> None:
    """The same line imported twice has the same id (the store keeps it once); another line,
    pool or account has another; the origin names file and line."""
    text = "1793606405|NONE|NONE|Agent/1|AGENTLOGIN|SIP/1\n1793606405|NONE|NONE|Agent/2|AGENTLOGIN|SIP/2"
    first, _ = run(text)
    again, _ = run(text)
    other_pool, _ = run(text, "agents")
    assert [e.id for e in first] == [e.id for e in again]
    assert len({e.id for e in first + other_pool}) == 4
    assert ["queue_log:1", "queue_log:2"] == [e.origin for e in first]
    assert datetime(2026, 11, 2, 8, 0, 5, tzinfo=UTC) == first[0].ts
    assert (b'{"id":"' + first[0].id.encode() + b'","type":"login","account":"cc",'
            b'"user":"Agent/1","ts":"2026-11-02T08:00:05Z","origin":"queue_log:1"}'
            ) == first[0].to_json()
