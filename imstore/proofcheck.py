"""Checking a proof document offline, with nothing but a verifier key: no store, no network (docs/DESIGN.md P5).

`check_document` trusts nothing it has not checked: the signature first, then
the proof against the signed root, and only then what the leaf says. It lives
apart from proofs.py (which makes documents) so that `imstore prove` does not
load it (start-up time, P10).
"""

from __future__ import annotations

from collections import namedtuple

from . import merkle
from .checkpoint import Checkpoint, Verifier, open_checkpoint, unb64
from .errors import CorruptLog, ProofFailed
from .records import decode_record

__all__ = ["Proven", "check_document", "parse", "INCLUSION_FIELDS", "CONSISTENCY_FIELDS"]

INCLUSION_FIELDS = ("checkpoint", "seq", "leaf", "inclusion")
CONSISTENCY_FIELDS = ("checkpoint", "old", "consistency")


class Proven(namedtuple("Proven", "checkpoint record old", defaults=(None, None))):
    """What a checked document proves: a record (a Record) in a checkpoint's log, or that the log grew from `old`
    (a Checkpoint). A collections.namedtuple, like checkpoint.Checkpoint, for start-up time."""

    __slots__ = ()


def parse(text: str) -> dict:
    """A proof document's fields, from any JSON spelling of one (P5); ProofFailed saying what is wrong.

    The formatting carries nothing: what counts is signed (the checkpoint) or checked
    against it (the proof, the leaf). A key given twice or a non-finite number is refused,
    so that no two readers can see different documents in one text.
    """
    import json

    def no_repeats(pairs: list[tuple[str, object]]) -> dict:
        document = dict(pairs)
        if len(document) != len(pairs):
            raise ProofFailed("the proof document gives a field twice")
        return document

    def no_constant(name: str) -> None:
        raise ProofFailed(f"the proof document holds {name}, which is not a JSON number")

    try:
        document = json.loads(text, object_pairs_hook=no_repeats, parse_constant=no_constant)
    except ValueError:
        raise ProofFailed("the proof document is not JSON") from None
    if not isinstance(document, dict):
        raise ProofFailed("the proof document is not a JSON object")
    if set(document) not in (set(INCLUSION_FIELDS), set(CONSISTENCY_FIELDS)):
        expected = f"{list(INCLUSION_FIELDS)} or {list(CONSISTENCY_FIELDS)}"
        raise ProofFailed(f"the proof document has fields {sorted(document)}; expected {expected}")
    return document


def check_document(text: str, verifier: Verifier) -> Proven:
    """Check a proof document offline: the signature, then the proof against the signed root. ProofFailed if anything fails."""
    document = parse(text)
    if not isinstance(document["checkpoint"], str):
        raise ProofFailed("the document's checkpoint is not a string")
    signed = open_checkpoint(document["checkpoint"], verifier)
    if "seq" in document:
        return _check_inclusion(document, signed)
    return _check_consistency(document, signed, verifier)


def _hashes(values: object, what: str) -> list[bytes]:
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise ProofFailed(f"the {what} proof is not a list of base64 hashes")
    return [unb64(value, f"a hash of the {what} proof") for value in values]


def _check_inclusion(document: dict, signed: Checkpoint) -> Proven:
    seq = document["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ProofFailed("the document's seq is not a record number")
    if not isinstance(document["leaf"], str):
        raise ProofFailed("the document's leaf is not base64")
    payload = unb64(document["leaf"], "the leaf")
    merkle.verify_inclusion(merkle.leaf_hash(payload), seq - 1, signed.size, _hashes(document["inclusion"], "inclusion"), signed.root)
    try:
        record = decode_record(payload)
    except CorruptLog:
        raise ProofFailed("the proven leaf is not an imstore record") from None
    if record.seq != seq:
        raise ProofFailed(f"the proven record says seq {record.seq}, the document {seq}")
    return Proven(signed, record=record)


def _check_consistency(document: dict, signed: Checkpoint, verifier: Verifier) -> Proven:
    if not isinstance(document["old"], str):
        raise ProofFailed("the document's old checkpoint is not a string")
    old = open_checkpoint(document["old"], verifier)
    if old.origin != signed.origin:
        raise ProofFailed(f"the two checkpoints are of different logs ({old.origin}, {signed.origin})")
    merkle.verify_consistency(old.size, signed.size, old.root, signed.root, _hashes(document["consistency"], "consistency"))
    return Proven(signed, old=old)
