"""rating: the pure functional core of license-meter.

Pure functions from (contracts, events, period) to results. No I/O, no clock, no import of
`meter`, `asyncio`, `sqlite3`, `aiosqlite`, `aiomqtt` or `prometheus_client` (a test enforces it).
Time is aware UTC, intervals are half-open `[start, end)`, money is `Decimal`.
"""

from rating.contracts import Account, Addon, Contracts, Order, Pool, parse_contracts
from rating.errors import ContractError, PolicyViolation, RatingError
from rating.periods import Period, monthly_period, period_of_month, term
from rating.pool import Episode, PoolJob, PoolRating, rate_pool, rate_pools
from rating.sessions import Session, SessionLog, build_sessions, split_sessions
from rating.timeline import Timeline
from rating.usage import EventColumns, UsageEvent

__version__ = "0.1.0"

__all__ = [
    "Account",
    "Addon",
    "ContractError",
    "Contracts",
    "Episode",
    "EventColumns",
    "Order",
    "Period",
    "PolicyViolation",
    "Pool",
    "PoolJob",
    "PoolRating",
    "RatingError",
    "Session",
    "SessionLog",
    "Timeline",
    "UsageEvent",
    "__version__",
    "build_sessions",
    "monthly_period",
    "parse_contracts",
    "period_of_month",
    "rate_pool",
    "rate_pools",
    "split_sessions",
    "term",
]
