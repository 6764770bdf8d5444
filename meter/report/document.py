"""The report document: its types, and the `Report` value every renderer takes.

DESIGN section 3 fixes the keys. The renderers (JSON, CSV, HTML, the demo's text) import this
module only, never the code that rates or stores, so the dependency runs one way: rating ->
document -> renderers. Amounts are strings in the currency's minor unit ("1490.00"), times
RFC 3339 in UTC with `Z`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NotRequired, TypedDict

from rating.bill import RATING_VERSION

__all__ = [
    "AccountDoc",
    "AccountReport",
    "AddonDoc",
    "BillToDoc",
    "ChargeDoc",
    "Charts",
    "CustomerDoc",
    "DayDoc",
    "EpisodeDoc",
    "GraceDoc",
    "InputsDoc",
    "InvoiceDoc",
    "LocalPeriodDoc",
    "NamedDoc",
    "PeriodDoc",
    "PoolChart",
    "PoolDoc",
    "RefusedDoc",
    "Report",
    "ReportDoc",
    "RightSizingDoc",
    "UserDoc",
]


class PeriodDoc(TypedDict):
    """A half-open period `[start, end)`."""

    start: str
    end: str


class GraceDoc(TypedDict):
    """A concurrent pool's grace rule, and the rule in words."""

    seconds: int
    mode: str
    rule: str


class EpisodeDoc(TypedDict):
    """A maximal stretch with usage above the licensed quantity."""

    start: str
    end: str
    duration_seconds: int
    peak_excess: int
    sustained_level: int
    within_grace: bool


class UserDoc(TypedDict):
    """Who was counted: one user's sessions and time signed in within the period (clipped to
    it), and whether they were signed in during an excess episode that was billed."""

    user: str
    sessions: int
    seconds: int
    first_login: str
    last_seen: str
    inferred_closes: int
    billed_window: bool


class DayDoc(TypedDict):
    """One local day of the period: its peak concurrency, first reached at `peak_at`, held for
    `seconds_at_peak` that day (None and 0 when nobody was signed in)."""

    date: str
    peak: int
    peak_at: str | None
    seconds_at_peak: int


class PoolDoc(TypedDict):
    """One pool's use in the period (named pools have no grace and no billable peak)."""

    pool: str
    model: str
    tier: str
    licensed: int
    users: int
    peak: int
    peak_at: str | None
    billable_peak: int | None
    overage_seats: int
    overage_price: str | None
    overage_amount: str
    grace: GraceDoc | None
    episodes: list[EpisodeDoc]
    usage_by_user: list[UserDoc]
    daily: list[DayDoc]


class NamedDoc(TypedDict):
    """How a named pool's seats were held and used."""

    pool: str
    licensed: int
    assigned: int
    active_users: int
    unlicensed_users: int
    unlicensed: list[str]
    refused_assigns: int
    idle_seats: int


class AddonDoc(TypedDict):
    """An add-on's coverage: what the use requires against what was bought."""

    addon: str
    required: int
    purchased: int
    shortfall: int


class ChargeDoc(TypedDict):
    """One bill line; `for_period` on adjustments names the finalized period they correct."""

    kind: str
    target: str
    quantity: int | None
    amount: str
    unit_price: str | None
    at: str | None
    description: str
    for_period: NotRequired[PeriodDoc]


class RefusedDoc(TypedDict):
    """An order or assign that broke its policy, with the reason."""

    kind: str
    target: str
    at: str
    quantity: int | None
    reason: str


class RightSizingDoc(TypedDict):
    """The licence count that would have cost least, and the saving."""

    pool: str
    licensed: int
    billable_peak: int
    recommended: int
    current_cost: str
    recommended_cost: str
    saving: str
    rule: str


class InputsDoc(TypedDict):
    """How many events were rated, the newest arrival among them, and the layout of the input
    hash (`meter.report.inputs.HASH_VERSION`; reports from before it have none: layout 1)."""

    events: int
    through_seq: int
    hash_version: NotRequired[int]


class LocalPeriodDoc(TypedDict):
    """The period by its local dates in the account's timezone: `label` is the month it starts
    in (`--period`), `first_day` and `last_day` are inclusive, with the UTC offsets there."""

    label: str
    first_day: str
    last_day: str
    utc_offset_start: str
    utc_offset_end: str


class BillToDoc(TypedDict):
    """Who the invoice is addressed to (from the contract's `bill_to`)."""

    name: str | None
    address: list[str]
    email: str | None
    tax_id: str | None


class CustomerDoc(TypedDict):
    """The customer: account id, its name (the id where the contract gives none), bill-to."""

    id: str
    name: str
    bill_to: BillToDoc | None


class InvoiceDoc(TypedDict):
    """The invoice: `number` from account and period (stable across runs), `issued_at` the
    time it was rated as of or finalized (None on a draft), and the customer."""

    number: str
    issued_at: str | None
    customer: CustomerDoc


class AccountDoc(TypedDict):
    """One account's bill for one period."""

    account: str
    currency: str
    timezone: str
    period: PeriodDoc
    local_period: LocalPeriodDoc
    invoice: InvoiceDoc
    input_hash: str
    inputs: InputsDoc
    finalized: bool
    pools: list[PoolDoc]
    named: list[NamedDoc]
    addons: list[AddonDoc]
    charges: list[ChargeDoc]
    refused: list[RefusedDoc]
    right_sizing: list[RightSizingDoc]
    unresolved_events: int
    total: str
    #: A period still running is rated as of this time (the usage so far); absent once the
    #: period and its session timeout are over.
    as_of: NotRequired[str]


class ReportPeriodDoc(TypedDict):
    """The report's span: the earliest start and latest end of its accounts' periods."""

    month: str
    start: str | None
    end: str | None


class ReportDoc(TypedDict):
    """The whole report (`meter report --format json`)."""

    period: ReportPeriodDoc
    rating_version: str
    input_hash: str
    accounts: list[AccountDoc]


class PoolChart(TypedDict):
    """The step functions a pool's chart draws, as [t_us, value] pairs: c(t) and E(t)."""

    c: list[list[int]]
    e: list[list[int]]


#: Chart series by pool id.
Charts = dict[str, PoolChart]


@dataclass(frozen=True, slots=True)
class AccountReport:
    """One account's part of a report: its document, its chart series, whether it is frozen."""

    account: str
    doc: AccountDoc
    charts: Charts
    finalized: bool


@dataclass(frozen=True, slots=True)
class Report:
    """A period's report over one or more accounts."""

    month: str
    accounts: tuple[AccountReport, ...]
    finalized_now: tuple[str, ...] = field(default=())

    def doc(self) -> ReportDoc:
        """The whole report as a JSON-ready document."""
        starts = [a.doc["period"]["start"] for a in self.accounts]
        ends = [a.doc["period"]["end"] for a in self.accounts]
        digest = hashlib.sha256("".join(a.doc["input_hash"] for a in self.accounts).encode())
        return {
            "period": {"month": self.month, "start": min(starts, default=None),
                       "end": max(ends, default=None)},
            "rating_version": RATING_VERSION,
            "input_hash": digest.hexdigest(),
            "accounts": [a.doc for a in self.accounts],
        }
