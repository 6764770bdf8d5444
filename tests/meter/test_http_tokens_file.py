"""`--http-tokens`: the TOML file's grants, and every mistake in it as one line naming the
file, the line of the token's table and the key."""

from __future__ import annotations

import hashlib

import pytest

from meter.errors import ConfigError
from meter.http.tokens import Grant, bearer, parse_tokens

PLAIN = "a-token-of-20-chars!"
DIGEST = hashlib.sha256(b"another-token-here").hexdigest()


def test_grants_from_plain_and_hashed_tokens() -> None:
    """`token` is hashed at load, `token_sha256` taken as is; `["*"]` is every account."""
    tokens = parse_tokens(f'''
[[token]]
name = "acme"
token = "{PLAIN}"
accounts = ["acme", "initech"]

[[token]]
token_sha256 = "{DIGEST.upper()}"
accounts = ["*"]
''', "t.toml")
    assert (Grant("acme", hashlib.sha256(PLAIN.encode()).digest(),
                  frozenset({"acme", "initech"})),
            Grant("token 2", bytes.fromhex(DIGEST), None)) == tokens.grants
    assert tokens.grants[0] == tokens.find(PLAIN)
    assert tokens.grants[1] == tokens.find("another-token-here")
    assert None is tokens.find(PLAIN[:-1])
    assert (True, False, True) == (tokens.grants[0].allows("acme"),
                                   tokens.grants[0].allows("globex"),
                                   tokens.grants[1].allows("globex"))
    assert (None, None) == (tokens.grants[0].only_account, tokens.grants[1].only_account)


@pytest.mark.parametrize(("text", "message"), [
    ("", "t.toml: no [[token]] table (each needs token_sha256 or token, and accounts)"),
    ("[[token]]\naccounts = ['a']\n", "t.toml:1: token 1: give exactly one of token_sha256 and token"),
    (f"\n\n[[token]]\ntoken = '{PLAIN}'\naccounts = ['a']\nnote = 1\n",
     "t.toml:3: token 1: key 'note': unknown (known: accounts, name, token, token_sha256)"),
    ("[[token]]\ntoken = 'short'\naccounts = ['a']\n",
     "t.toml:1: token 1: key 'token': expected a string of at least 16 characters"),
    ("[[token]]\ntoken_sha256 = 'abc'\naccounts = ['a']\n",
     "t.toml:1: token 1: key 'token_sha256': expected 64 hex digits"),
    (f"[[token]]\ntoken = '{PLAIN}'\naccounts = []\n",
     "t.toml:1: token 1: key 'accounts': expected a non-empty list of account ids "
     '(["*"] for every account)'),
    (f"[[token]]\ntoken = '{PLAIN}'\naccounts = ['*', 'a']\n",
     "t.toml:1: token 1: key 'accounts': \"*\" already means every account"),
    (f"[[token]]\ntoken = '{PLAIN}'\naccounts = ['a']\n[[token]]\n"
     f"token_sha256 = '{hashlib.sha256(PLAIN.encode()).hexdigest()}'\naccounts = ['b']\n",
     "t.toml:4: token 2: the same token as token 1"),
    ("tokens = 1\n", "t.toml: key 'tokens': unknown (a tokens file holds [[token]] tables)"),
])
def test_mistakes_name_the_file_line_and_key(text: str, message: str) -> None:
    """Each mistake is a ConfigError (exit 2) saying where, and never echoing a token."""
    with pytest.raises(ConfigError) as raised:
        parse_tokens(text, "t.toml")
    assert message == str(raised.value)
    assert PLAIN not in str(raised.value)


@pytest.mark.parametrize(("header", "expected"), [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer", None),
    (None, None), ("", None),
])
def test_bearer(header: str | None, expected: str | None) -> None:
    """Only the Bearer scheme carries a token."""
    assert expected == bearer(header)
