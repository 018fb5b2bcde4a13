"""Checks for what users hand us: keys, version numbers, times, metadata, sizes.

Keys are exact UTF-8 strings (no Unicode normalisation) and are never paths.
"""

from __future__ import annotations

import re
import time
import unicodedata
from datetime import UTC

from .errors import InvalidInput, InvalidKey, InvalidTime, InvalidVersion

__all__ = ["MAX_KEY_BYTES", "validate_key", "parse_version", "parse_time", "format_time", "validate_meta", "validate_content_type",
           "validate_message", "parse_size", "MAX_NUMBER"]

MAX_KEY_BYTES = 1024
MAX_META_ITEMS = 64
MAX_META_BYTES = 64 * 1024
# The largest number the store keeps (SQLite's INTEGER, and a byte count in the log): bigger is a usage error.
MAX_NUMBER = (1 << 63) - 1
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def validate_key(key: object) -> str:
    """Return key if it is a valid key; raise InvalidKey saying why otherwise."""
    if not isinstance(key, str):
        raise InvalidKey("a key must be a string")
    if key == "":
        raise InvalidKey("a key must not be empty")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey("a key must be valid UTF-8 (it holds a lone surrogate)") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidKey(f"a key is at most {MAX_KEY_BYTES} bytes of UTF-8 (this one is {len(encoded)})")
    if key.isspace():
        raise InvalidKey("a key must not be only whitespace")
    if key.isascii() and key.isprintable():
        return key  # printable ASCII holds no control character (batch imports validate thousands of keys)
    for position, char in enumerate(key):
        if unicodedata.category(char) == "Cc":
            raise InvalidKey(f"a key must not hold control characters (found U+{ord(char):04X} at {position})")
    return key


def parse_version(value: object) -> int:
    """A version number: an int >= 1 (strings of digits are accepted)."""
    if isinstance(value, bool):
        raise InvalidVersion(f"not a version number: {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        digits = value.strip().lstrip("0") or "0"
        number = int(digits) if len(digits) <= 19 else MAX_NUMBER + 1  # int() refuses 4300+ digits
    else:
        raise InvalidVersion(f"not a version number: {value!r:.40}")
    if number < 1:
        raise InvalidVersion(f"versions start at 1: {value!r}")
    if number > MAX_NUMBER:
        raise InvalidVersion(f"a version number is at most {MAX_NUMBER}: {value!r:.40}")
    return number


# Compiled by re's cache on first use (only --at needs it), not at every start.
_TIME_PARTS = r"\d{4}-?\d{2}-?\d{2}(?:[T ](\d{2})(?::?(\d{2})(?::?(\d{2})(?:[.,](\d+))?)?)?)?"


def parse_time(value: str) -> int:
    """ISO 8601 (Z or +hh:mm; no offset means UTC) → nanoseconds since the epoch.

    A time stands for the whole of its last digit: `12:00:05` is the last
    nanosecond of that second, `12:00:05.123` of that millisecond. So a time
    copied from `history` (milliseconds) finds the version written then.
    """
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise InvalidTime("empty time")
    from datetime import datetime

    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidTime(f"not an ISO 8601 time: {value!r} (e.g. 2026-11-28T12:00:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    start = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    end = start + _precision_ns(text) - 1
    if not -MAX_NUMBER <= end <= MAX_NUMBER:  # the index keeps times as 64-bit nanoseconds
        raise InvalidTime(f"{value!r} is outside the times imstore can hold (1677-09-22 to 2262-04-11)")
    return end


def _precision_ns(text: str) -> int:
    """The length of the span a written time covers (a day, a minute, 1 ms, …)."""
    parts = re.match(_TIME_PARTS, text)
    if parts is None:
        return 1
    hours, minutes, seconds, fraction = parts.groups()
    if hours is None:
        return 86_400 * 1_000_000_000
    if minutes is None:
        return 3_600 * 1_000_000_000
    if seconds is None:
        return 60 * 1_000_000_000
    if fraction is None:
        return 1_000_000_000
    return 10 ** max(0, 9 - len(fraction))


def format_time(time_ns: int) -> str:
    """Nanoseconds since the epoch → '2026-11-28T12:00:00.123Z'."""
    seconds, rest = divmod(time_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest // 1_000_000:03d}Z"


def validate_meta(meta: dict | None) -> dict[str, str]:
    """Metadata is a small map of text to text."""
    if not meta:
        return {}
    if not isinstance(meta, dict) or len(meta) > MAX_META_ITEMS:
        raise InvalidInput(f"metadata is a map of at most {MAX_META_ITEMS} text items")
    total = 0
    for name, value in meta.items():
        if not isinstance(name, str) or not isinstance(value, str) or not name:
            raise InvalidInput("metadata names and values are non-empty text")
        total += len(name.encode("utf-8", "surrogatepass")) + len(value.encode("utf-8", "surrogatepass"))
        for text in (name, value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInput("metadata must be valid UTF-8") from None
    if total > MAX_META_BYTES:
        raise InvalidInput(f"metadata is at most {MAX_META_BYTES} bytes")
    return dict(meta)


MAX_CONTENT_TYPE_CHARS = 255
MAX_MESSAGE_CHARS = 4096


def validate_content_type(content_type: object) -> str | None:
    """A content type as every write path takes it: 1 to 255 printable characters, or None.

    It becomes an HTTP header: a control character (CR, LF, NUL…) would make the
    version unservable, or split the answer's headers.
    """
    if content_type is None:
        return None
    if not isinstance(content_type, str) or not content_type.strip() or len(content_type) > MAX_CONTENT_TYPE_CHARS:
        raise InvalidInput(f"a content type is text of 1 to {MAX_CONTENT_TYPE_CHARS} characters")
    if not (content_type.isascii() and content_type.isprintable()):
        raise InvalidInput("a content type is printable ASCII (no control characters)")
    return content_type


def validate_message(message: object) -> str | None:
    """A version's message: text of at most 4,096 characters with no control characters but tab and newline."""
    if message is None:
        return None
    if not isinstance(message, str):
        raise InvalidInput("a message must be text")
    if len(message) > MAX_MESSAGE_CHARS:
        raise InvalidInput(f"a message is at most {MAX_MESSAGE_CHARS} characters (this one is {len(message)})")
    if any(unicodedata.category(char) == "Cc" and char not in "\t\n" for char in message):
        raise InvalidInput("a message must not hold control characters (tab and newline are fine)")
    return message


def parse_size(text: str | int) -> int:
    """The one SIZE grammar (--max-size, --cache-size, serve --max-body): 4096, 100K, 1.5G, 10MiB, 1gb.

    Units are binary (K = 1024); a fraction is rounded down to whole bytes.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        number = text
    else:
        parts = _SIZE.fullmatch(text.strip()) if isinstance(text, str) else None
        if parts is None:
            raise InvalidInput(f"not a size: {text!r:.40} (e.g. 4096, 512K, 1.5G, 10MiB)")
        digits, unit = parts.groups()
        whole, _, fraction = digits.partition(".")
        if len(whole.lstrip("0")) > 20:  # more than MAX_NUMBER in any unit (and int() refuses 4300+ digits)
            raise InvalidInput(f"a size is at most {MAX_NUMBER} bytes: {text!r:.40}")
        fraction = fraction[:24]  # finer than a byte in every unit
        scale = _SIZE_UNITS[unit.lower() if unit else None]
        # Exact integer arithmetic: no float rounding, and no OverflowError for a size of 10**400.
        number = int(whole or "0") * scale + (int(fraction) * scale // 10 ** len(fraction) if fraction else 0)
    if number < 0:
        raise InvalidInput(f"a size cannot be negative: {text!r:.40}")
    if number > MAX_NUMBER:
        raise InvalidInput(f"a size is at most {MAX_NUMBER} bytes: {text!r:.40}")
    return number
