"""FlexLM debug logs to events: dates from TIMESTAMP and start lines, the unmarked midnight,
DST, the restart rule, user@host, DENIED counts and bad lines; a property against counting."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meter.importers.common import BadLine, Imported
from meter.importers.flexlm import FlexlmCounts, FlexlmImport
from tests.importers.sweep import peaks

UTC_ZONE = ZoneInfo("UTC")
MADRID = ZoneInfo("Europe/Madrid")


def run(*files: str, tz: ZoneInfo = UTC_ZONE, pool_map: dict[str, str] | None = None
        ) -> tuple[list[Imported], FlexlmCounts]:
    imp = FlexlmImport("acme", tz, pool_map)
    for n, body in enumerate(files):
        imp.feed(f"f{n}.log", [line.encode() + b"\n" for line in body.strip("\n").splitlines()])
    return imp.finish()


def brief(events: list[Imported]) -> list[tuple[str, str, str, str | None]]:
    """(type, ts, pool, session) per event: what a table row states."""
    return [(e.type, e.ts.strftime("%Y-%m-%d %H:%M:%S"), e.pool or "", e.session)
            for e in events]


@pytest.mark.parametrize(("log", "expected"), [
    # A time that goes back is the next day.
    ("""
23:50:00 (lmgrd) TIMESTAMP 3/30/2016
23:59:50 (v) OUT: "F" u@h
 0:00:10 (v) IN: "F" u@h
""", [("login", "2016-03-30 23:59:50", "F", "u@h"), ("logout", "2016-03-31 00:00:10", "F", "u@h")]),
    # Forward all day: the same date, however late.
    ("""
 0:00:01 (lmgrd) TIMESTAMP 3/30/2016
 8:00:00 (v) OUT: "F" u@h
23:59:59 (v) IN: "F" u@h
""", [("login", "2016-03-30 08:00:00", "F", "u@h"), ("logout", "2016-03-30 23:59:59", "F", "u@h")]),
    # Two midnights, then a TIMESTAMP line agrees with the count.
    ("""
22:00:00 (lmgrd) TIMESTAMP 12/31/2015
23:00:00 (v) OUT: "F" u@h
 9:00:00 (v) OUT: "G" u@h
 1:00:00 (lmgrd) TIMESTAMP 1/2/2016
 2:00:00 (v) IN: "F" u@h
""", [("login", "2015-12-31 23:00:00", "F", "u@h"), ("login", "2016-01-01 09:00:00", "G", "u@h"),
      ("logout", "2016-01-02 02:00:00", "F", "u@h")]),
    # A TIMESTAMP line wins over a counted date (a day with no line at all in between).
    ("""
10:00:00 (lmgrd) TIMESTAMP 3/30/2016
10:00:01 (v) OUT: "F" u@h
 9:00:00 (lmgrd) TIMESTAMP 4/2/2016
 9:30:00 (v) IN: "F" u@h
""", [("login", "2016-03-30 10:00:01", "F", "u@h"), ("logout", "2016-04-02 09:30:00", "F", "u@h")]),
    # Lines before the first date are dated back from it, across a midnight.
    ("""
22:00:00 (v) OUT: "F" u@h
 1:00:00 (v) OUT: "F" w@h
 7:56:05 (lmgrd) TIMESTAMP 3/31/2016
 8:00:00 (v) IN: "F" u@h
""", [("login", "2016-03-30 22:00:00", "F", "u@h"), ("login", "2016-03-31 01:00:00", "F", "w@h"),
      ("logout", "2016-03-31 08:00:00", "F", "u@h")]),
    # The start line's date, as a log begins.
    ("""
 1:56:00 (lmgrd) Server's System Date and Time: Wed Mar 30 2016 01:56:00 Romance Daylight Time
 1:56:05 (lmgrd) FlexNet Licensing (v11.12.0.0 build 136775 x64_n6) started on S (IBM PC) (3/30/2016)
 6:51:39 (adskflex) OUT: "F" u@h
""", [("login", "2016-03-30 06:51:39", "F", "u@h")]),
])
def test_dates_and_the_midnight_rollover(log: str, expected: list[tuple[str, ...]]) -> None:
    """Each line gets its date from the last TIMESTAMP or start line, plus one day for every
    time that goes back; lines before any date are dated back from the first one."""
    events, _ = run(log)
    assert expected == brief(events)


def test_a_dst_fall_back_hour_is_the_repeated_hour_not_a_new_day() -> None:
    """Madrid, 30 October 2022: 02:59:59 CEST is followed by 02:00:00 CET. The hour goes back,
    the date does not: the second 02:10 is an hour after the first."""
    events, _ = run("""
 1:00:00 (lmgrd) TIMESTAMP 10/30/2022
 2:10:00 (v) OUT: "F" u@h
 2:50:00 (v) OUT: "F" w@h
 2:10:00 (v) IN: "F" u@h
 3:00:00 (v) IN: "F" w@h
""", tz=MADRID)
    assert [("login", "2022-10-30 00:10:00"), ("login", "2022-10-30 00:50:00"),
            ("logout", "2022-10-30 01:10:00"), ("logout", "2022-10-30 02:00:00")] == \
        [(t, ts) for t, ts, _, _ in brief(events)]


def test_spring_forward_keeps_the_day_and_the_offset_changes() -> None:
    """Madrid, 27 March 2022: 01:59 CET, then 03:01 CEST, one hour and two minutes apart."""
    events, _ = run("""
 0:00:00 (lmgrd) TIMESTAMP 3/27/2022
 1:59:00 (v) OUT: "F" u@h
 3:01:00 (v) IN: "F" u@h
""", tz=MADRID)
    assert [datetime(2022, 3, 27, 0, 59, tzinfo=UTC), datetime(2022, 3, 27, 1, 1, tzinfo=UTC)] == \
        [e.ts for e in events]


NEXT_FILE = "\f"  # splits a table row's log into files
START = "(lmgrd) FlexNet Licensing (v11.18.1.0 build 279785 x64_n6) started on S (IBM PC) (6/9/2022)"


@pytest.mark.parametrize(("log", "expected", "closed"), [
    # lmgrd starting again: every checkout ends at the last time the old log showed.
    (f"""
 8:00:00 (lmgrd) TIMESTAMP 6/9/2022
 9:00:00 (MLM) OUT: "MATLAB" a@h1
 9:30:00 (adskflex) OUT: "ACAD" b@h2
10:00:00 (MLM) TIMESTAMP 6/9/2022
10:05:00 {START}
10:06:00 (MLM) IN: "MATLAB" a@h1
""", [("login", "2022-06-09 09:00:00", "MATLAB", "a@h1"),
      ("login", "2022-06-09 09:30:00", "ACAD", "b@h2"),
      ("logout", "2022-06-09 10:00:00", "MATLAB", "a@h1"),
      ("logout", "2022-06-09 10:00:00", "ACAD", "b@h2")], 2),
    # lmgrd starting one vendor daemon again: only that daemon's checkouts end.
    ("""
 8:00:00 (lmgrd) TIMESTAMP 6/9/2022
 9:00:00 (MLM) OUT: "MATLAB" a@h1
 9:30:00 (adskflex) OUT: "ACAD" b@h2
11:00:00 (lmgrd) MLM exited with status 44
11:00:05 (lmgrd) Started MLM (pid 1234)
12:00:00 (adskflex) IN: "ACAD" b@h2
""", [("login", "2022-06-09 09:00:00", "MATLAB", "a@h1"),
      ("login", "2022-06-09 09:30:00", "ACAD", "b@h2"),
      ("logout", "2022-06-09 11:00:00", "MATLAB", "a@h1"),
      ("logout", "2022-06-09 12:00:00", "ACAD", "b@h2")], 1),
    # A restart across files: the first file's checkouts end at its last line.
    ("""
 8:00:00 (lmgrd) TIMESTAMP 6/9/2022
 9:00:00 (MLM) OUT: "MATLAB" a@h1
18:00:00 (lmgrd) TIMESTAMP 6/9/2022
""" + NEXT_FILE + f"""
10:05:00 {START}
10:06:00 (MLM) IN: "MATLAB" a@h1
""", [("login", "2022-06-09 09:00:00", "MATLAB", "a@h1"),
      ("logout", "2022-06-09 18:00:00", "MATLAB", "a@h1")], 1),
    # A shutdown: the daemon's one IN per user@host returns all it held there.
    ("""
 8:00:00 (lmgrd) TIMESTAMP 6/9/2022
 9:00:00 (MLM) OUT: "MATLAB" a@h1
 9:00:01 (MLM) OUT: "MATLAB" a@h1
 9:00:02 (MLM) OUT: "MATLAB" a@h1  (3 licenses)
 9:30:00 (MLM) IN: "MATLAB" a@h1
10:00:00 (lmgrd) EXITING DUE TO SIGNAL 15
10:00:00 (MLM) IN: "MATLAB" a@h1  (SHUTDOWN)
""", [("login", "2022-06-09 09:00:00", "MATLAB", "a@h1"),
      ("logout", "2022-06-09 10:00:00", "MATLAB", "a@h1")], 0),
    # Nothing out: a start closes nothing.
    (f"""
 8:00:00 {START}
 9:00:00 (MLM) OUT: "MATLAB" a@h1
 9:10:00 (MLM) IN: "MATLAB" a@h1
""", [("login", "2022-06-09 09:00:00", "MATLAB", "a@h1"),
      ("logout", "2022-06-09 09:10:00", "MATLAB", "a@h1")], 0),
])
def test_a_server_restart_closes_every_open_checkout(
        log: str, expected: list[tuple[str, ...]], closed: int) -> None:
    """A new lmgrd (or a vendor daemon lmgrd starts again) holds none of the old checkouts;
    their IN lines never come, so the import ends them at the last time seen before the start.
    An IN after the restart is of nothing out and is counted, not an event. A shutdown that
    writes its IN lines ends every license of a user@host with one line."""
    events, counts = run(*log.split(NEXT_FILE))
    assert expected == brief(events)
    assert closed == counts.closed_by_restart


def test_checkouts_of_one_user_at_one_host_are_one_session_until_the_last_is_in() -> None:
    """Two licenses out from one host (two lines or `(2 licenses)`): the session ends at the
    last IN; two hosts are two sessions of one user; a checkout and check-in within one
    second is no time in use and makes no event (a logout at the login's own instant would be
    applied first and leave it open)."""
    events, counts = run("""
 8:00:00 (lmgrd) TIMESTAMP 6/9/2022
 9:00:00 (MLM) OUT: "MATLAB" José Juan Galera@Plasmon
 9:01:00 (MLM) OUT: "MATLAB" José Juan Galera@Plasmon  (2 licenses)
 9:02:00 (MLM) IN: "MATLAB" José Juan Galera@Plasmon  (2 licenses)
 9:03:00 (MLM) OUT: "MATLAB" José Juan Galera@other
 9:04:00 (MLM) IN: "MATLAB" José Juan Galera@Plasmon  (INACTIVE)
 9:05:00 (MLM) IN: "MATLAB" José Juan Galera@other  (SHUTDOWN)
 9:06:00 (MLM) OUT: "MATLAB" x@h
 9:06:00 (MLM) IN: "MATLAB" x@h
 9:07:00 (MLM) IN: "MATLAB" y@h
""")
    assert [("login", "2022-06-09 09:00:00", "MATLAB", "José Juan Galera@Plasmon"),
            ("login", "2022-06-09 09:03:00", "MATLAB", "José Juan Galera@other"),
            ("logout", "2022-06-09 09:04:00", "MATLAB", "José Juan Galera@Plasmon"),
            ("logout", "2022-06-09 09:05:00", "MATLAB", "José Juan Galera@other")] == brief(events)
    assert {"José Juan Galera"} == {e.user for e in events}
    assert (4, 5, 1, 1) == (counts.checkouts, counts.checkins, counts.same_second,
                            counts.checkins_unknown)


def test_denied_queued_unsupported_are_counted_per_pool_and_unmapped_features_skipped() -> None:
    """DENIED lines are counted per pool (never events); with a pool map a feature not in it
    is skipped and counted by name."""
    events, counts = run("""
 8:00:00 (lmgrd) TIMESTAMP 6/9/2022
 9:00:00 (MLM) OUT: "MATLAB" a@h
 9:00:01 (MLM) DENIED: "MATLAB" b@h  (Licensed number of users already reached. (-4,342))
 9:00:02 (MLM) DENIED: "MATLAB" c@h  (Licensed number of users already reached. (-4,342))
 9:00:03 (MLM) DENIED: "Simulink" c@h  (Licensed number of users already reached. (-4,342))
 9:00:04 (MLM) QUEUED: "MATLAB" d@h
 9:00:05 (MLM) UNSUPPORTED: "X" (BF00 2) e@h  (No such feature exists. (-5,414))
 9:00:06 (MLM) OUT: "Statistics_Toolbox" a@h
""", pool_map={"MATLAB": "matlab", "Simulink": "simulink"})
    assert [("login", "2022-06-09 09:00:00", "matlab", "a@h")] == brief(events)
    assert Counter({"matlab": 2, "simulink": 1}) == counts.denied
    assert Counter({"Statistics_Toolbox": 1}) == counts.unmapped
    assert (1, 1) == (counts.queued, counts.unsupported)
    assert ("denied", 3) in counts.rows()


@pytest.mark.parametrize(("log", "message"), [
    (" 8:00:00 (lmgrd) TIMESTAMP 6/9/2022\n25:00:00 (MLM) OUT: \"F\" a@h\n",
     "f0.log:2: field time: 25:00:00 is not a time of day"),
    (" 8:00:00 (lmgrd) TIMESTAMP 6/9/2022\n 9:00:00 (MLM) OUT: \"F\" nobody\n",
     "f0.log:2: field user@host: expected user@host, got 'nobody'"),
    (" 8:00:00 (lmgrd) TIMESTAMP 13/9/2022\n",
     "f0.log:1: field date: no such date in 'TIMESTAMP 13/9/2022'"),
    (" 9:00:00 (MLM) OUT: \"F\" a@h\n 9:10:00 (MLM) IN: \"F\" a@h\n",
     "f0.log:1: field date: no TIMESTAMP line or server start date in the file to date it"),
    (" 8:00:00 (lmgrd) TIMESTAMP 6/9/2022\n 9:00:00 (MLM) OUT: \"\" a@h\n",
     "f0.log:2: field feature: empty feature name"),
])
def test_a_bad_line_names_file_line_and_field(log: str, message: str) -> None:
    """What cannot be read stops the import with the file, line and field."""
    with pytest.raises(BadLine) as err:
        run(log)
    assert message == str(err.value)
    assert 2 == err.value.exit_code


# A property: whatever the checkouts, the imported sessions count, at every instant, exactly
# the users with at least one license out per the log (counted line by line).
_STEP = st.tuples(st.integers(0, 6 * 3600), st.sampled_from(["OUT", "IN"]),
                  st.sampled_from(["F", "G"]), st.sampled_from(["u", "v", "w"]),
                  st.sampled_from(["h1", "h2"]))


@settings(max_examples=150, deadline=None)
@given(start=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
       steps=st.lists(_STEP, max_size=40), zone=st.sampled_from(["UTC", "Asia/Tokyo"]),
       every=st.integers(1, 12))
def test_property_imported_sessions_count_what_the_log_holds_out(
        start: datetime, steps: list[tuple[int, str, str, str, str]], zone: str, every: int
) -> None:
    """Lines a few hours apart (so a midnight may pass unmarked), a TIMESTAMP line first and
    then every `every` lines: the times come back exact, and the peak per pool of the imported
    events (a sweep) equals the peak of users with a license out, counted from the lines."""
    tz = ZoneInfo(zone)
    t = start.replace(microsecond=0, tzinfo=UTC)
    lines = [f"{t.astimezone(tz):%H:%M:%S} (lmgrd) TIMESTAMP {t.astimezone(tz):%m/%d/%Y}"]
    out: Counter[tuple[str, str, str]] = Counter()
    best: dict[str, tuple[int, datetime | None]] = {}
    for n, (gap, kind, feature, user, host) in enumerate(steps, 1):
        t += timedelta(seconds=gap)
        local = t.astimezone(tz)
        if n % every == 0:
            lines.append(f"{local:%H:%M:%S} (lmgrd) TIMESTAMP {local.month}/{local.day}/{local.year}")
        lines.append(f"{local:%H:%M:%S} (v) {kind}: \"{feature}\" {user}@{host}  ")
        key = (feature, user, host)
        if kind == "OUT":
            out[key] += 1
        elif out[key]:
            out[key] -= 1
        # The count after every line of one second is what holds during it.
        if n == len(steps) or steps[n][0] > 0:
            for pool in ("F", "G"):
                users = len({u for (f, u, _), k in out.items() if f == pool and k})
                if users > best.get(pool, (0, None))[0]:
                    best[pool] = (users, t)
    events, _ = run("\n".join(lines), tz=tz)
    import_peaks = peaks([{"ts": e.ts.isoformat(), "type": e.type, "pool": e.pool,
                           "user": e.user, "session": e.session} for e in events],
                         timedelta(days=3650), t + timedelta(days=1))
    assert {p: v for p, v in best.items() if v[0]} == \
        {p: v for p, v in import_peaks.items() if v[0]}
