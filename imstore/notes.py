"""The text of checkpoints and signed notes, without keys or signature checks (docs/DESIGN.md P3, P4, P10).

checkpoint.py signs and checks notes; what only reads or writes their text is
here, so that a `prove` answered with the cached checkpoint (P9) loads neither
the key classes nor their module: the checkpoint body, standard base64, and the
key ids a key file or a signature line names (read, not checked).
"""

from __future__ import annotations

import binascii  # not base64: the same functions, without its import (prove's start-up)

from .errors import ProofFailed

__all__ = [
    "ALG_ED25519", "SIGNATURE_DASH", "PRIVATE_PREFIX", "b64", "unb64", "checkpoint_body", "store_origin", "note_size",
    "private_key_id", "signature_key_id",
]  # fmt: skip

ALG_ED25519 = 0x01
SIGNATURE_DASH = "\u2014 "  # an em dash and a space start each signature line
PRIVATE_PREFIX = "PRIVATE+KEY+"


def b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    """Standard base64, canonical only (padding and unused bits as an encoder writes them): else ProofFailed."""
    try:
        data = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ProofFailed(f"{what} is not valid base64") from None
    if b64(data) != text:
        raise ProofFailed(f"{what} is not in canonical base64")
    return data


def private_key_id(text: str) -> str | None:
    """The key id hex a private key file names (read, not checked: for matching a cached note to the key)."""
    parts = text.strip()[len(PRIVATE_PREFIX) :].split("+", 2) if text.startswith(PRIVATE_PREFIX) else []
    return parts[1] if len(parts) == 3 else None


def signature_key_id(note: str) -> str | None:
    """The key id hex of a note's last signature line (read, not checked)."""
    line = note.rstrip("\n").rpartition("\n")[2]
    if not line.startswith(SIGNATURE_DASH):
        return None
    try:
        return binascii.a2b_base64(line.rpartition(" ")[2], strict_mode=True)[:4].hex()
    except (binascii.Error, ValueError):
        return None


def checkpoint_body(origin: str, size: int, root: bytes) -> str:
    """The checkpoint's text (C2SP tlog-checkpoint): origin, size and root hash, each line ending in a newline."""
    return f"{origin}\n{size}\n{b64(root)}\n"


def note_size(note: str) -> int:
    """The tree size a checkpoint note claims, read without checking it (to ask for a proof that will check it)."""
    lines = note.split("\n")
    if len(lines) < 3 or not lines[1].isdigit() or not lines[1].isascii():
        raise ProofFailed("the checkpoint has no tree size on its second line")
    return int(lines[1])


def store_origin(store_id: str) -> str:
    return f"imstore/{store_id}"
