"""Bearer tokens of the HTTP API: the `--http-tokens` TOML file of `[[token]]` tables, each a
token (its SHA-256, or the token itself, hashed at load) and the accounts it may read and write
(`["*"]`: every account, an operator). Only digests are kept; a token is never logged.

    [[token]]
    name = "acme-ingest"            # optional: names the token in log lines, never the secret
    token_sha256 = "9f86d08..."     # hex SHA-256 of the token (`printf %s TOKEN | sha256sum`)
    accounts = ["acme"]
"""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meter.errors import ConfigError

__all__ = ["ANYONE", "OPERATOR", "Grant", "Tokens", "bearer", "load_tokens", "parse_tokens"]

#: The `accounts` entry that grants every account.
OPERATOR: Final = "*"
_KEYS: Final = frozenset({"name", "token", "token_sha256", "accounts"})
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class Grant:
    """One token: the SHA-256 of its text and the accounts it may use (None: every account)."""

    name: str
    digest: bytes
    accounts: frozenset[str] | None

    def allows(self, account: str) -> bool:
        """Whether this token may read and write `account`."""
        return self.accounts is None or account in self.accounts

    @property
    def only_account(self) -> str | None:
        """The one account of a single-account token (where its rejected lines are filed)."""
        if self.accounts is not None and len(self.accounts) == 1:
            return next(iter(self.accounts))
        return None


#: Who calls when there is no tokens file (HTTP ingest is then bound to loopback only).
ANYONE: Final = Grant("anonymous (no --http-tokens)", b"", None)


@dataclass(frozen=True, slots=True)
class Tokens:
    """The grants of a tokens file."""

    grants: tuple[Grant, ...]

    def find(self, token: str) -> Grant | None:
        """The grant of `token`, or None. Every grant's digest is compared in constant time and
        the loop never stops early, so the time taken says nothing about which one matched."""
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = None
        for grant in self.grants:
            if hmac.compare_digest(digest, grant.digest):
                found = grant
        return found


def _table_lines(text: str) -> list[int]:
    """The line number of each `[[token]]` header, so an error names where the table starts."""
    return [n for n, line in enumerate(text.splitlines(), 1)
            if re.match(r"\s*\[\[\s*token\s*\]\]", line)]


def parse_tokens(text: str, source: str) -> Tokens:
    """The grants of a tokens file's text; a `ConfigError` naming the file, the line of the
    token's table and the key otherwise."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(k for k in doc if k != "token")
    if unknown:
        raise ConfigError(f"{source}: key {unknown[0]!r}: unknown (a tokens file holds "
                          "[[token]] tables)")
    tables = doc.get("token", [])
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{source}: no [[token]] table (each needs token_sha256 or token, "
                          "and accounts)")
    lines = _table_lines(text)
    grants: list[Grant] = []
    seen: dict[bytes, int] = {}
    for i, table in enumerate(tables):
        where = f"{source}:{lines[i] if i < len(lines) else '?'}: token {i + 1}"
        grant = _grant(table, where, i)
        if grant.digest in seen:
            raise ConfigError(f"{where}: the same token as token {seen[grant.digest] + 1}")
        seen[grant.digest] = i
        grants.append(grant)
    return Tokens(tuple(grants))


def _grant(table: object, where: str, index: int) -> Grant:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = sorted(k for k in table if k not in _KEYS)
    if unknown:
        raise ConfigError(f"{where}: key {unknown[0]!r}: unknown (known: "
                          f"{', '.join(sorted(_KEYS))})")
    given = [k for k in ("token", "token_sha256") if k in table]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of token_sha256 and token")
    value = table[given[0]]
    if given[0] == "token":
        if not isinstance(value, str) or len(value) < 16:
            raise ConfigError(f"{where}: key 'token': expected a string of at least 16 "
                              "characters")
        digest = hashlib.sha256(value.encode()).digest()
    else:
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            raise ConfigError(f"{where}: key 'token_sha256': expected 64 hex digits")
        digest = bytes.fromhex(value)
    accounts = table.get("accounts")
    if (not isinstance(accounts, list) or not accounts
            or not all(isinstance(a, str) and a for a in accounts)):
        raise ConfigError(f"{where}: key 'accounts': expected a non-empty list of account ids "
                          '(["*"] for every account)')
    if OPERATOR in accounts and len(accounts) > 1:
        raise ConfigError(f"{where}: key 'accounts': \"*\" already means every account")
    name = table.get("name", f"token {index + 1}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: key 'name': expected a non-empty string")
    return Grant(name, digest, None if accounts == [OPERATOR] else frozenset(accounts))


def load_tokens(path: Path) -> Tokens:
    """Read and parse the tokens file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the HTTP tokens: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    return parse_tokens(text, str(path))


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
