"""Deterministic generator of a month of agent session events (JSONL) for license-meter.

Writes November 2026 for the sample accounts of `contracts.toml` (local shift times in each
account's timezone) with the anomalies a real feed has: shift-change overlaps shorter than the
grace, one sustained overage, agents on two devices, missing logouts, a lost login, QoS 1
redeliveries, out-of-order lines and malformed lines of every rejection kind. What was planted is
printed to stderr; sample_sessions/README.md records it for the committed month.

    python sample_sessions/generate.py --out sample_sessions/events-2026-11.jsonl
    python sample_sessions/generate.py --accounts 1000 --agents 20 --out big.jsonl \\
        --contracts-out big.toml          # a benchmark set: 1,000 accounts cloned from the samples
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec

SEED = 20261101
HERE = Path(__file__).resolve().parent
MONTH_START = date(2026, 11, 1)

MORNING = (time(7, 0), time(15, 0))
EVENING = (time(15, 0), time(23, 0))


@dataclass(frozen=True)
class PoolPlan:
    """How one concurrent pool is staffed: licensed steps as (UTC instant, quantity)."""

    pool: str
    tag: str                         # short user-name tag, e.g. "a" for agents
    licensed: tuple[tuple[datetime, int], ...]
    grace: timedelta
    mode: str                        # continuous | cumulative
    send_pool: bool                  # False: the pool is left out and resolved by the meter
    heartbeat_session: bool = True   # False: heartbeats carry no session id

    def quantity_at(self, instant: datetime) -> int:
        return [q for at, q in self.licensed if at <= instant][-1]


@dataclass(frozen=True)
class AccountPlan:
    """One sample account: its timezone, concurrent pools and (optionally) a named pool."""

    id: str
    tz: ZoneInfo
    pools: tuple[PoolPlan, ...]
    named: str | None = None
    named_quantity: int = 0


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


_FROM_ANCHOR = _utc("2026-01-01T00:00:00Z")
TEMPLATES: tuple[AccountPlan, ...] = (
    AccountPlan("acme", ZoneInfo("America/New_York"), (
        PoolPlan("agents", "a", ((_FROM_ANCHOR, 12), (_utc("2026-11-10T15:30:00Z"), 14)),
                 timedelta(minutes=30), "continuous", send_pool=True),
        PoolPlan("support", "s", ((_FROM_ANCHOR, 6),),
                 timedelta(minutes=30), "cumulative", send_pool=True),
    )),
    AccountPlan("globex", ZoneInfo("Europe/Berlin"), (
        PoolPlan("agents", "a", ((_FROM_ANCHOR, 10), (_utc("2026-11-04T09:00:00+01:00"), 15)),
                 timedelta(minutes=30), "continuous", send_pool=False),
    ), named="leads", named_quantity=5),
    AccountPlan("initech", ZoneInfo("Asia/Tokyo"), (
        PoolPlan("desk", "d", ((_FROM_ANCHOR, 8), (_utc("2026-11-06T10:00:00+09:00"), 10)),
                 timedelta(minutes=45), "continuous", send_pool=False, heartbeat_session=False),
    )),
)


@dataclass
class Session:
    """One planned session and how its events are sent."""

    account: str
    pool: str | None          # as sent (None: left out of the payload)
    pool_key: str             # the pool it counts in, for the planted-overage check
    user: str
    session: str
    start: datetime
    end: datetime
    heartbeat_session: bool = True
    drop_logout: bool = False  # the client vanished: heartbeats just stop
    drop_login: bool = False   # the login was lost: the first heartbeat opens the session
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class Month:
    """Tallies of what was planted, and (for the sample month) every session, for the check."""

    planted: Counter[str] = field(default_factory=Counter)
    sessions: list[Session] = field(default_factory=list)


class Ids:
    """Random 64-bit hex event ids (like UUIDs: no order to exploit), unique per run."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seen: set[str] = set()

    def new(self) -> str:
        while True:
            value = f"{self.rng.getrandbits(64):016x}"
            if value not in self.seen:
                self.seen.add(value)
                return value


_encode = msgspec.json.Encoder().encode


def _ts(instant: datetime, tz: ZoneInfo) -> str:
    return instant.astimezone(tz).replace(microsecond=0).isoformat()


def _local(day: date, at: time, tz: ZoneInfo, plus: timedelta = timedelta()) -> datetime:
    # Wall-clock shift times: on the 25-hour DST day a 07:00 start is still 07:00 local.
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC) + plus


def _event(ids: Ids, kind: str, account: str, user: str, at: datetime, tz: ZoneInfo,  # noqa: PLR0917 - one per field
           pool: str | None, session: str | None, extra: dict[str, str] | None = None) -> bytes:
    body: dict[str, str] = {"id": ids.new(), "type": kind, "account": account, "user": user,
                            "ts": _ts(at, tz)}
    if pool is not None:
        body["pool"] = pool
    if session is not None:
        body["session"] = session
    if extra:
        body.update(extra)
    return _encode(body)


def _beats(s: Session, heartbeat: timedelta) -> list[datetime]:
    """Heartbeat times of a session: every `heartbeat` after the login, before the end."""
    count = (s.end - s.start - timedelta(microseconds=1)) // heartbeat
    return [s.start + heartbeat * k for k in range(1, count + 1)]


def _emit(out: list[tuple[datetime, bytes]], ids: Ids, s: Session, tz: ZoneInfo,
          heartbeat: timedelta) -> None:
    """The login, heartbeats and logout of one session, as timed lines."""
    if not s.drop_login:
        out.append((s.start, _event(ids, "login", s.account, s.user, s.start, tz, s.pool, s.session,
                                    s.extra)))
    for beat in _beats(s, heartbeat):
        out.append((beat, _event(ids, "heartbeat", s.account, s.user, beat, tz, s.pool,
                                 s.session if s.heartbeat_session else None)))
    if not s.drop_logout:
        out.append((s.end, _event(ids, "logout", s.account, s.user, s.end, tz, s.pool, s.session)))


def _jitter(rng: random.Random, minutes: float) -> timedelta:
    return timedelta(seconds=rng.randrange(int(minutes * 60) + 1))


def _shift_pair(rng: random.Random, account: AccountPlan, plan: PoolPlan, day: date, *,
                staff: int, overlaps: int) -> list[Session]:
    """A morning and an evening shift of `staff` agents each, with `overlaps` handovers in which
    the evening agent arrives 10-20 minutes before the morning agent leaves.

    Every handover overlap lies inside 14:50-15:15 local, so an excess from shift change never
    lasts 30 minutes in one stretch.
    """
    tz, acc = account.tz, account.id
    sessions: list[Session] = []
    mmdd = day.strftime("%m%d")
    pool_sent = plan.pool if plan.send_pool else None
    overlapping = set(rng.sample(range(staff), overlaps))
    for i in range(staff):
        morning_user = f"{acc}-{plan.tag}m{i + 1:02d}"
        evening_user = f"{acc}-{plan.tag}e{i + 1:02d}"
        start = _local(day, MORNING[0], tz, _jitter(rng, 10))
        if i in overlapping:
            arrive = _local(day, time(14, 50), tz, _jitter(rng, 5))
            leave = arrive + timedelta(minutes=10) + _jitter(rng, 10)
        elif i == 0:
            # An instant handover: logout and login at the same second are not double use.
            leave = arrive = _local(day, MORNING[1], tz, _jitter(rng, 5))
        else:
            leave = _local(day, MORNING[1], tz, _jitter(rng, 5))
            arrive = leave + timedelta(seconds=rng.randrange(1, 181))
        end = _local(day, EVENING[1], tz, _jitter(rng, 10))
        sessions.append(Session(acc, pool_sent, plan.pool, morning_user, f"{morning_user}-{mmdd}a",
                                start, leave, plan.heartbeat_session))
        sessions.append(Session(acc, pool_sent, plan.pool, evening_user, f"{evening_user}-{mmdd}a",
                                arrive, end, plan.heartbeat_session))
    return sessions


def _staff(plan: PoolPlan, account: AccountPlan, day: date, agents: int | None) -> int:
    # Staffed to the licences in force at the start of the morning shift, unless told otherwise.
    full = agents if agents is not None else plan.quantity_at(_local(day, MORNING[0], account.tz))
    return full if day.weekday() < 5 else max(1, full // 2)


def _plant_specials(rng: random.Random, month: Month, template: str, account: AccountPlan, *,
                    ids: Ids, sessions: list[Session], seats: list[tuple[datetime, bytes]]) -> None:
    """The scenario-specific plants of each template account (see sample_sessions/README.md)."""
    tz, acc = account.tz, account.id
    if template == "acme":
        # Sustained overage: 3 temps on top of a full morning shift for exactly 2 hours.
        day = date(2026, 11, 12)
        for n in range(1, 4):
            user = f"{acc}-at{n}"
            sessions.append(Session(acc, "agents", "agents", user, f"{user}-1112a",
                                    _local(day, time(10, 0), tz), _local(day, time(12, 0), tz),
                                    extra={"device": "temp-desk"}))
        month.planted["sustained_overage_sessions"] += 3
    elif template == "initech":
        # An excess of exactly the 45-minute grace: free (only longer than the grace bills).
        day = date(2026, 11, 19)
        user = f"{acc}-dt1"
        sessions.append(Session(acc, None, "desk", user, f"{user}-1119a",
                                _local(day, time(13, 0), tz), _local(day, time(13, 45), tz),
                                heartbeat_session=False))
        month.planted["exact_grace_sessions"] += 1
    elif template == "globex":
        _plant_named(rng, month, account, ids=ids, sessions=sessions, seats=seats)


def _plant_named(rng: random.Random, month: Month, account: AccountPlan, *, ids: Ids,
                 sessions: list[Session], seats: list[tuple[datetime, bytes]]) -> None:
    """Seat assignments of the named pool, a refused assign and logins by unassigned users."""
    tz, acc, pool = account.tz, account.id, account.named
    assert pool is not None
    lead = [f"{acc}-l{n}" for n in range(1, 8)]

    def seat(kind: str, user: str, day: int, at: time, send_pool: bool) -> None:
        instant = _local(date(2026, 11, day), at, tz)
        seats.append((instant, _event(ids, kind, acc, user, instant, tz,
                                      pool if send_pool else None, None)))
        month.planted[kind] += 1

    for n in range(5):                       # fills the 5 seats; some leave the pool out
        seat("assign", lead[n], 1, time(8, n), send_pool=n % 2 == 0)
    seat("assign", lead[5], 3, time(10, 0), send_pool=True)      # a 6th seat: refused
    month.planted["refused_assign"] += 1
    seat("unassign", lead[4], 16, time(8, 50), send_pool=True)
    seat("assign", lead[5], 16, time(8, 55), send_pool=False)     # fits now, before the shift

    for offset in range(30):
        day = MONTH_START + timedelta(days=offset)
        if day.weekday() >= 5:
            continue
        leads = [lead[n] for n in range(4)] + ([lead[4]] if day.day < 16 else [lead[5]])
        for user in leads:
            # Assigned users leave the pool out: the meter resolves it from the assignment.
            sessions.append(Session(
                acc, None, pool, user, f"{user}-{day:%m%d}a",
                _local(day, time(9, 0), tz, _jitter(rng, 10)),
                _local(day, time(17, 0), tz, _jitter(rng, 10))))
    # Unlicensed use: logins to the named pool by users without a seat at the time.
    for user, day in ((lead[5], 4), (lead[6], 19)):
        when = date(2026, 11, day)
        sessions.append(Session(acc, pool, pool, user, f"{user}-{when:%m%d}a",
                                _local(when, time(9, 30), tz), _local(when, time(12, 0), tz)))
        month.planted["unlicensed_logins"] += 1


def _malformed(ids: Ids, clones: list[tuple[str, AccountPlan]]) -> list[tuple[str, bytes]]:
    """One or two lines of every rejection reason an offline file can have (no topic: no
    tenant_mismatch). Each is (reason, line)."""
    acme = next(a for t, a in clones if t == "acme")
    globex = next(a for t, a in clones if t == "globex")
    when = "2026-11-12T10:07:00-05:00"

    def good(**over: object) -> dict[str, object]:
        body: dict[str, object] = {"id": ids.new(), "type": "login", "account": acme.id,
                                   "user": f"{acme.id}-am01", "ts": when, "pool": "agents",
                                   "session": f"{acme.id}-am01-1112z"}
        body.update(over)
        return body

    def enc(body: dict[str, object]) -> bytes:
        return _encode(body)

    missing_user = good()
    del missing_user["user"]
    return [
        ("not_json", enc(good())[:57]),                                   # cut off mid-write
        ("not_json", b"<html><body>502 Bad Gateway</body></html>"),       # a proxy's error page
        ("schema", enc(missing_user)),                                    # a required field missing
        ("schema", enc(good(type="break"))),                              # not an event type
        ("schema", enc(good(user=42))),                                   # wrong type
        ("oversized", enc(good(note="x" * 9000))),                        # over the 8 KiB limit
        ("bad_timestamp", enc(good(ts="2026-11-12T10:07:00"))),           # naive: no offset
        ("bad_timestamp", enc(good(ts="yesterday"))),                     # not RFC 3339
        ("future", enc(good(ts="2099-12-05T09:00:00Z"))),                 # far ahead: a near date turns valid
        ("unknown_account", enc(good(account="hooli"))),
        ("unknown_account", enc(good(account="umbrella", pool=None))),
        ("unknown_pool", enc(good(pool="sales"))),
        ("unknown_pool", enc(good(account=globex.id, type="assign", user=f"{globex.id}-l1",
                                  pool="agents", session=None))),       # assign to a concurrent pool
    ]


def generate(write: Callable[[list[bytes]], object], *, accounts: int | None = None,
             agents: int | None = None, days: int = 30, heartbeat: timedelta = timedelta(minutes=30),
             seed: int = SEED) -> tuple[Month, list[str]]:
    """Generate the month and hand its lines to `write` in file order: in one piece for the
    sample accounts, a day at a time for cloned accounts (`<template>-0001`, ...), so a
    benchmark set of millions of lines never sits in memory at once. Returns the tallies and
    the account ids."""
    rng = random.Random(seed)
    ids = Ids(random.Random(seed + 1))
    month = Month()
    if accounts is None:
        clones = [(t.id, t) for t in TEMPLATES]
    else:
        clones = []
        for n in range(accounts):
            t = TEMPLATES[n % len(TEMPLATES)]
            clones.append((t.id, AccountPlan(f"{t.id}-{n + 1:04d}", t.tz, t.pools, t.named,
                                             t.named_quantity)))
    zones = {a.id: a.tz for _, a in clones}

    # The scenario plants, filed under the local day they happen on.
    special_sessions: list[Session] = []
    special_seats: list[tuple[datetime, bytes]] = []
    for template, account in clones:
        seats: list[tuple[datetime, bytes]] = []
        _plant_specials(rng, month, template, account, ids=ids, sessions=special_sessions,
                        seats=seats)
        special_seats += [(at, line) for at, line in seats]
    by_day: dict[date, list[Session]] = {}
    for s in special_sessions:
        by_day.setdefault(s.start.astimezone(zones[s.account]).date(), []).append(s)
    seats_by_day: dict[date, list[tuple[datetime, bytes]]] = {}
    for at, line in special_seats:
        account_id = msgspec.json.decode(line)["account"]
        seats_by_day.setdefault(at.astimezone(zones[account_id]).date(), []).append((at, line))

    malformed = _malformed(ids, clones)
    chunks = 1 if accounts is None else days
    malformed_chunk = [rng.randrange(chunks) for _ in malformed]
    lost_login_day = MONTH_START + timedelta(days=min(9, days - 1))
    timed: list[tuple[datetime, bytes]] = []
    chunk = 0
    for offset in range(days):
        day = MONTH_START + timedelta(days=offset)
        sessions: list[Session] = []
        for _template, account in clones:
            for plan in account.pools:
                staff = _staff(plan, account, day, agents)
                overlaps = min(staff, 2 if day.weekday() < 5 else rng.randrange(2))
                sessions += _shift_pair(rng, account, plan, day, staff=staff, overlaps=overlaps)
        sessions += by_day.get(day, [])
        _plant_session_anomalies(rng, month, sessions, lost_login=day == lost_login_day)
        for s in sessions:
            _emit(timed, ids, s, zones[s.account], heartbeat)
        timed += seats_by_day.get(day, [])
        if accounts is None:
            month.sessions += sessions
        if chunks == 1 and offset < days - 1:
            continue
        timed.sort(key=lambda pair: pair[0])
        lines = _disorder(rng, month, [line for _, line in timed])
        for (reason, line), at in zip(malformed, malformed_chunk, strict=True):
            if at == chunk:
                lines.insert(rng.randrange(len(lines) + 1), line)
                month.planted[f"malformed_{reason}"] += 1
        month.planted["lines"] += len(lines)
        write(lines)
        timed = []
        chunk += 1
    return month, [a.id for _, a in clones]


def _plant_session_anomalies(rng: random.Random, month: Month, sessions: list[Session], *,
                             lost_login: bool) -> None:
    """Second devices, missing logouts and (once) a lost login, on random regular sessions."""
    regular = [s for s in sessions
               if s.session.endswith("a") and s.end - s.start >= timedelta(hours=6)]
    if not regular:
        return
    # Agents on two devices: a softphone session inside the desktop one; they count once.
    for s in rng.sample(regular, max(1, len(regular) // 40)):
        start = s.start + timedelta(hours=1) + _jitter(rng, 60)
        end = start + timedelta(minutes=30) + _jitter(rng, 90)
        s.extra = {"device": "desktop"}
        sessions.append(Session(s.account, s.pool, s.pool_key, s.user, s.session[:-1] + "b",
                                start, end, s.heartbeat_session, extra={"device": "softphone"}))
        month.planted["second_device_sessions"] += 1
    for s in rng.sample(regular, max(1, len(regular) // 30)):
        s.drop_logout = True
        month.planted["missing_logouts"] += 1
    if lost_login:
        lost = rng.choice([s for s in regular if not s.drop_logout])
        lost.drop_login = True
        month.planted["lost_logins"] += 1


def _disorder(rng: random.Random, month: Month, lines: list[bytes]) -> list[bytes]:
    """Out-of-order lines (one in 500 moved 2-40 lines later, as a retrying client or a broker
    bridge delivers them) and QoS 1 redeliveries (one in 250 repeated exactly, up to 30 lines
    after the original). One pass, so millions of lines cost no quadratic inserts."""
    n = len(lines)
    moved: dict[int, int] = {}
    for _ in range(max(1, n // 500) if n > 41 else 0):
        i = rng.randrange(n - 41)
        if i not in moved:
            moved[i] = i + rng.randrange(2, 41)
            month.planted["out_of_order"] += 1
    later: dict[int, list[bytes]] = {}
    for i, j in moved.items():
        later.setdefault(j, []).append(lines[i])
    for _ in range(max(1, n // 250)):
        i = rng.randrange(n)
        later.setdefault(min(n - 1, i + rng.randrange(30)), []).append(lines[i])
        month.planted["duplicates"] += 1
    out: list[bytes] = []
    for i, line in enumerate(lines):
        if i not in moved:
            out.append(line)
        out += later.get(i, ())
    return out


def check_overage(month: Month, heartbeat: timedelta) -> list[str]:
    """Per pool: the largest excess over the licences, and per level the longest unbroken stretch
    and the total time at or above it, from the sessions as the meter will see them.

    A slow, plain sweep (no rating code), so the README's expected figures are independent.
    """
    plans = {(a.id, p.pool): p for a in TEMPLATES for p in a.pools}
    spans: dict[tuple[str, str], dict[str, list[tuple[datetime, datetime]]]] = {}
    for s in month.sessions:
        if (s.account, s.pool_key) not in plans:
            continue
        # What the meter sees: open at the login (or first heartbeat), closed at the logout (or,
        # without one, at the last heartbeat).
        beats = _beats(s, heartbeat)
        start = s.start if not s.drop_login else (beats[0] if beats else s.end)
        end = s.end if not s.drop_logout else (beats[-1] if beats else s.start)
        if end > start:
            spans.setdefault((s.account, s.pool_key), {}).setdefault(s.user, []).append((start, end))
    out = []
    for key, users in sorted(spans.items()):
        plan = plans[key]
        deltas: Counter[datetime] = Counter()
        for intervals in users.values():
            for start, end in _union(intervals):
                deltas[start] += 1
                deltas[end] -= 1
        for at, _q in plan.licensed[1:]:
            deltas[at] += 0
        longest: Counter[int] = Counter()
        total: Counter[int] = Counter()
        since: dict[int, datetime] = {}
        count, excess = 0, 0
        for at in sorted(deltas):
            count += deltas[at]
            new = max(0, count - plan.quantity_at(at))
            for level in range(new + 1, excess + 1):          # levels that end here
                length = at - since.pop(level)
                longest[level] = max(longest[level], int(length.total_seconds()))
                total[level] += int(length.total_seconds())
            for level in range(excess + 1, new + 1):          # levels that start here
                since[level] = at
            excess = new
        top = max(longest, default=0)
        grace = int(plan.grace.total_seconds())
        continuous = max((k for k in longest if longest[k] > grace), default=0)
        cumulative = max((k for k in total if total[k] >= grace), default=0)
        billed = continuous if plan.mode == "continuous" else cumulative
        levels = ", ".join(f"x>={k}: longest {_hms(longest[k])}, total {_hms(total[k])}"
                           for k in range(1, top + 1))
        out.append(f"{key[0]}/{key[1]} ({plan.mode} {_hms(grace)}): max excess {top}; "
                   f"overage seats {billed}; {levels}")
    return out


def _union(intervals: list[tuple[datetime, datetime]]) -> Iterator[tuple[datetime, datetime]]:
    current: tuple[datetime, datetime] | None = None
    for start, end in sorted(intervals):
        if current is not None and start <= current[1]:
            current = (current[0], max(current[1], end))
            continue
        if current is not None:
            yield current
        current = (start, end)
    if current is not None:
        yield current


def _hms(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def clone_contracts(text: str, accounts: list[str]) -> str:
    """The sample contracts repeated for cloned account ids (`acme-0001` is a copy of acme)."""
    blocks = re.split(r"(?m)^(?=\[\[account\]\])", text)
    by_id = {}
    for block in blocks:
        match = re.search(r'(?m)^id = "([^"]+)"', block)
        if block.startswith("[[account]]") and match:
            by_id[match.group(1)] = block
    out = []
    for account in accounts:
        template = account.rsplit("-", 1)[0]
        out.append(by_id[template].replace(f'id = "{template}"', f'id = "{account}"', 1))
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSONL file to write (- for stdout)")
    parser.add_argument("--accounts", type=int, default=None,
                        help="clone the sample accounts into N accounts (benchmark sets); "
                             "needs --contracts-out")
    parser.add_argument("--contracts-out", help="write the cloned accounts' contracts here")
    parser.add_argument("--agents", type=int, default=None,
                        help="agents per shift in every concurrent pool (default: the licences)")
    parser.add_argument("--days", type=int, default=30, help="days from 1 November 2026 (max 30)")
    parser.add_argument("--heartbeat", type=int, default=40, help="minutes between heartbeats")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    if args.accounts is not None and not args.contracts_out:
        parser.error("--accounts needs --contracts-out (the clones need contracts)")
    if not 1 <= args.days <= 30:
        parser.error("--days must be 1-30 (the sample month is November 2026)")
    heartbeat = timedelta(minutes=args.heartbeat)
    size = 0
    with (open(sys.stdout.fileno(), "wb", closefd=False) if args.out == "-"
          else Path(args.out).open("wb")) as out:
        def write(lines: list[bytes]) -> None:
            nonlocal size
            body = b"\n".join(lines) + b"\n"
            size += len(body)
            out.write(body)

        month, accounts = generate(write, accounts=args.accounts, agents=args.agents,
                                   days=args.days, heartbeat=heartbeat, seed=args.seed)
    if args.contracts_out:
        text = (HERE / "contracts.toml").read_text(encoding="utf-8")
        Path(args.contracts_out).write_text(clone_contracts(text, accounts), encoding="utf-8")
    err = sys.stderr
    lines = month.planted["lines"]
    print(f"wrote {lines} lines ({size:,} bytes) for {len(accounts)} accounts", file=err)
    print("planted:", file=err)
    for name, count in sorted(month.planted.items()):
        print(f"  {name:<28}{count:>8}", file=err)
    rejected = sum(n for k, n in month.planted.items() if k.startswith("malformed_"))
    print(f"expected ingest: accepted {lines - month.planted['duplicates'] - rejected}, "
          f"duplicates {month.planted['duplicates']}, rejected {rejected}", file=err)
    if args.accounts is None:
        print("excess over licences (from the sessions, before rating):", file=err)
        for line in check_overage(month, heartbeat):
            print(f"  {line}", file=err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
