"""Reading what clients put in headers and query strings: preconditions, ranges, ETags, text.

Header values are Latin-1 on the wire, so UTF-8 text (messages, metadata)
travels percent-encoded: `encode_text` and `text_header` are the two sides.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote, unquote

from ..errors import InvalidInput, InvalidVersion, UsageError
from ..hashing import OBJECT_ID_LEN
from ..validate import MAX_NUMBER
from .idempotency import validate_idempotency_key
from .protocol import META_HEADER

__all__ = [
    "positive",
    "non_negative",
    "preconditions",
    "idempotency_key",
    "encode_text",
    "text_header",
    "meta_header",
    "etag_matches",
    "parse_range",
]

_HEX = re.compile(r"[0-9a-f]+")


def encode_text(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _number(text: str) -> int | None:
    """A decimal number in ASCII digits up to MAX_NUMBER (what the index can hold), else None.

    Not str.isdigit() alone: it takes '²' and other digits int() refuses."""
    digits = text.lstrip("0") or "0"
    if not (text.isascii() and text.isdigit()) or len(digits) > 19 or int(digits) > MAX_NUMBER:
        return None
    return int(digits)


def positive(text: str | None, name: str) -> int | None:
    if text is None or text == "":
        return None
    number = _number(text)
    if number is None or number < 1:
        raise InvalidInput(f"{name} must be an integer from 1 to {MAX_NUMBER}, not {text!r:.40}")
    return number


def non_negative(text: str | None, name: str) -> int:
    if text is None or text == "":
        return 0
    number = _number(text)
    if number is None:
        raise InvalidInput(f"{name} must be an integer from 0 to {MAX_NUMBER}, not {text!r:.40}")
    return number


def preconditions(headers) -> dict:
    """A write's conditions (H1): If-Match "vN" → if_version N (v0: no versions yet); If-Match * or
    ETags a key read gave → if_match ("*" or the tags, checked by conditions.py); If-None-Match: * → if_absent."""
    conditions: dict = {}
    if_match = headers.get("If-Match")
    if if_match is not None:
        text = if_match.strip()
        number = _number(text[2:-1]) if text.startswith('"v') and text.endswith('"') else None
        if number is not None:
            conditions["if_version"] = number
        elif text == "*":
            conditions["if_match"] = "*"
        else:
            conditions["if_match"] = _entity_tags(if_match)
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            raise UsageError("on a write, If-None-Match only takes *")
        conditions["if_absent"] = True
    return conditions


def _entity_tags(header: str) -> tuple[tuple[int, str], ...]:
    """(version, object id) of each strong tag of an If-Match list; a weak tag never matches a write (RFC 9110)."""
    tags = []
    for item in header.split(","):
        item = item.strip()
        weak = item.startswith("W/")
        quoted = item[2:] if weak else item
        version, dash, object_id = quoted[1:-1].partition("-")
        quoted_right = len(quoted) > 2 and quoted[0] == quoted[-1] == '"'
        number = _number(version[1:]) if quoted_right and version.startswith("v") else None
        if number is None or not dash or len(object_id) != OBJECT_ID_LEN or not _HEX.fullmatch(object_id):
            raise InvalidVersion(f'If-Match takes "vN", * or the ETags a key read gave ("vN-<hash>"), not {header!r:.60}')
        if not weak:
            tags.append((number, object_id))
    return tuple(tags)


def idempotency_key(request) -> str | None:
    value = request.headers.get("Idempotency-Key")
    return validate_idempotency_key(value) if value is not None else None


def text_header(value: str | None) -> str | None:
    """Header values are Latin-1 on the wire, so UTF-8 text travels percent-encoded."""
    if value is None:
        return None
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise InvalidInput("a percent-encoded header is not valid UTF-8") from None


def meta_header(value: str | None) -> dict | None:
    text = text_header(value)
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except ValueError:
        raise InvalidInput(f"{META_HEADER} must be a percent-encoded JSON object") from None
    if not isinstance(meta, dict):
        raise InvalidInput(f"{META_HEADER} must be a JSON object")
    return meta


def etag_matches(header: str | None, object_id: str) -> bool:
    if not header:
        return False
    for tag in header.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag == "*" or tag.strip('"') == object_id:
            return True
    return False


def parse_range(header: str, size: int):
    """(start, end) for one `bytes=` range, 'unsatisfiable', or None to ignore it (RFC 9110)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec or not spec.isascii():  # ASCII: isdigit() then means int() works
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:
        length = _offset(last)
        if length == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - length), size
    start = _offset(first)
    end = min(_offset(last) + 1, size) if last else size
    if start >= size or (last and _offset(last) < start):
        return "unsatisfiable"
    return start, end


def _offset(digits: str) -> int:
    """A byte position; one past any object's size when it has more digits than int() should parse."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 19 else MAX_NUMBER + 1
