"""`meter.http.body.split`: a POST body as numbered messages, as a table."""

from __future__ import annotations

import pytest

from meter.http.body import UnsupportedMediaType, split


@pytest.mark.parametrize(("body", "media_type", "expected"), [
    (b'{"a":1}\n{"b":2}\n', "application/x-ndjson", [(1, b'{"a":1}'), (2, b'{"b":2}')]),
    (b'{"a":1}\r\n\r\n  \n{"b":2}', "application/x-ndjson", [(1, b'{"a":1}'), (4, b'{"b":2}')]),
    (b"", "application/x-ndjson", []),
    (b'{"a":1}', "application/jsonl", [(1, b'{"a":1}')]),
    (b'{"a": 1}', "application/json", [(1, b'{"a": 1}')]),
    (b' [{"a": 1}, {"b": [2]}, 3]', "application/json", [(1, b'{"a": 1}'), (2, b'{"b": [2]}'),
                                                         (3, b"3")]),
    (b"[]", "application/json", []),
    (b'[{"a": 1}', "application/json", [(1, b'[{"a": 1}')]),  # not JSON: one not_json message
    (b"nonsense", "APPLICATION/JSON", [(1, b"nonsense")]),
])
def test_split(body: bytes, media_type: str, expected: list[tuple[int, bytes]]) -> None:
    """NDJSON numbers lines (blank ones counted, skipped); an array numbers its items; any
    other JSON body is one message."""
    assert expected == split(body, media_type)


def test_other_media_types_are_refused() -> None:
    """text/plain is neither JSON nor NDJSON."""
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        split(b"{}", "text/plain")
