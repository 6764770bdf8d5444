"""A `POST /v1/events` body as numbered messages: one JSON event, a JSON array of events, or
NDJSON (one event a line). Pure: bytes and a media type in, `(number, payload)` pairs out, each
payload then judged by `meter.events.parse` exactly as an MQTT message is.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = ["JSON_TYPES", "NDJSON_TYPES", "UnsupportedMediaType", "split"]

#: Media types read as NDJSON (one event a line; blank lines are skipped, not counted).
NDJSON_TYPES: Final = frozenset({"application/x-ndjson", "application/ndjson",
                                 "application/jsonl", "application/x-jsonlines",
                                 "application/jsonlines"})
#: Media types read as one JSON event or a JSON array of events.
JSON_TYPES: Final = frozenset({"application/json"})

_items: Final = msgspec.json.Decoder(list[msgspec.Raw])


class UnsupportedMediaType(ValueError):
    """The body's media type is neither JSON nor NDJSON."""


def split(body: bytes, media_type: str) -> list[tuple[int, bytes]]:
    """The messages of `body`, each with its number from 1: the line for NDJSON, the item for
    a JSON array (1 for a single event). A JSON body that does not parse is one message (it is
    then rejected as `not_json`, as on MQTT)."""
    media_type = media_type.lower()
    if media_type in NDJSON_TYPES:
        return [(n, line.rstrip(b"\r")) for n, line in enumerate(body.split(b"\n"), 1)
                if line.strip()]
    if media_type not in JSON_TYPES:
        raise UnsupportedMediaType(media_type)
    if body.lstrip()[:1] == b"[":
        try:
            items = _items.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            return [(1, body)]
        return [(n, bytes(item)) for n, item in enumerate(items, 1)]
    return [(1, body)]
