"""A PostgreSQL URL fit to print: its password hidden, wherever the URL carries one."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["hide_password"]


def hide_password(url: str, mask: str | None) -> str:
    """`url` with its password (in the authority, or a `password=` query parameter) replaced by
    `mask`, or left out when `mask` is None. A URL without a password comes back unchanged."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{mask}@{hostport}" if mask is not None else f"{user}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k == "password" for k, _ in pairs):
            kept = ([(k, mask if k == "password" else v) for k, v in pairs] if mask is not None
                    else [(k, v) for k, v in pairs if k != "password"])
            query = urlencode(kept, safe="*/:")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Not urlunsplit: it folds `postgresql:///db` (no host: the local socket) into `postgresql:/db`.
    return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))
