"""Signed checkpoints: C2SP tlog-checkpoint text in a C2SP signed note, Ed25519 (docs/DESIGN.md P3, P4).

A checkpoint (a signed tree head) says "the log named <origin> has <size>
records and this root hash":

    imstore/<store id>
    <size in decimal>
    <root hash, standard base64>

    — <key name> <base64(4-byte key id || 64-byte Ed25519 signature)>

The key id is the first 4 bytes of SHA-256(key name || 0x0A || 0x01 || public
key), exactly as Go's golang.org/x/mod/sumdb/note, which reads our notes
unchanged. Verifier keys are `<name>+<key id hex>+<base64(0x01 || public key)>`;
the private key file holds Go's form, `PRIVATE+KEY+<name>+<key id hex>+<base64(0x01 || seed)>`.
Parsing is strict: anything but the one canonical spelling is refused, so no
byte of a checkpoint can change unnoticed.
"""

from __future__ import annotations

import binascii  # not base64: the same functions, without its import (prove's start-up)
import os
from collections import namedtuple
from pathlib import Path

from .errors import CorruptStore, InvalidInput, ProofFailed, from_os_error
from .fsio import atomic_write
from .notes import (  # re-exported: the text of notes, which a cached checkpoint needs without this module
    ALG_ED25519,
    PRIVATE_PREFIX,
    SIGNATURE_DASH,
    b64,
    checkpoint_body,
    note_size,
    store_origin,
    unb64,
)

__all__ = [
    "Checkpoint", "Signer", "Verifier", "checkpoint_body", "sign_note", "open_checkpoint", "note_size", "store_origin", "b64", "unb64",
]  # fmt: skip


# (collections.namedtuple, not typing.NamedTuple: the latter evaluates its annotations, ~0.1 ms of every prove's start-up)
class Checkpoint(namedtuple("Checkpoint", "origin size root note")):
    """A checkpoint whose signature was checked: the log `origin` (str) had `size` (int) records with this `root`
    (32 bytes); `note` is the whole signed note, byte for byte as it was checked."""

    __slots__ = ()


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(char.isspace() for char in name) and name.isprintable()


def _key_id(name: str, public: bytes) -> bytes:
    import hashlib  # with `cryptography`, only where a key is made or checked: a cached checkpoint needs neither

    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()[:4]


class Verifier:
    """A note verifier key: the name, key id and Ed25519 public key a checkpoint must be signed with."""

    def __init__(self, name: str, public: bytes):
        if not _valid_name(name):
            raise InvalidInput(f"invalid key name {name!r}")
        self.name = name
        self.public = public
        self.key_id = _key_id(name, public)

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """`<name>+<key id hex>+<base64(0x01 || public key)>`; InvalidInput if it is not one."""
        parts = text.strip().split("+", 2)  # base64 has "+" in its alphabet: the key is the rest
        if len(parts) != 3:
            raise InvalidInput("a verifier key reads <name>+<key id hex>+<base64 key> (imstore key prints it)")
        name, key_id_hex, encoded = parts
        try:
            key = unb64(encoded, "the verifier key")
        except ProofFailed as exc:
            raise InvalidInput(str(exc)) from None
        if len(key) != 33 or key[0] != ALG_ED25519:
            raise InvalidInput("the verifier key is not an Ed25519 note key")
        verifier = cls(name, key[1:])
        if verifier.key_id.hex() != key_id_hex:
            raise InvalidInput("the verifier key's id does not match its name and key (a mistyped key?)")
        return verifier

    def __str__(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{b64(bytes([ALG_ED25519]) + self.public)}"

    def check(self, text: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, text)
        except InvalidSignature:
            return False
        return True


class Signer:
    """The store's signing key (node-local, mode 0600), made on first use."""

    def __init__(self, name: str, seed: bytes):
        self.name = name
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        public = self._private.public_key().public_bytes_raw()
        self.verifier = Verifier(name, public)

    @classmethod
    def load_or_create(cls, path: Path, name: str) -> Signer:
        """The key in path; made there first if there is none (two processes racing share one key)."""
        try:
            try:
                text = path.read_text("ascii")
            except FileNotFoundError:
                seed = os.urandom(32)  # an Ed25519 private key is 32 random bytes (RFC 8032 section 5.1.5)
                atomic_write(path, cls(name, seed).private_text().encode("ascii"), 0o600, create_only=True)
                text = path.read_text("ascii")
        except OSError as exc:
            raise from_os_error(exc, f"reading the signing key {path}") from None
        except UnicodeDecodeError:
            text = ""
        return cls.parse_private(text.strip(), path)

    @classmethod
    def parse_private(cls, text: str, path: Path) -> Signer:
        damaged = CorruptStore(f"the signing key file {path} is damaged (it is node-local: move it away to make a new key)")
        if not text.startswith(PRIVATE_PREFIX):
            raise damaged
        parts = ["", "", *text[len(PRIVATE_PREFIX) :].split("+", 2)]
        if len(parts) != 5:
            raise damaged
        try:
            key = binascii.a2b_base64(parts[4], strict_mode=True)
        except (binascii.Error, ValueError):
            raise damaged from None
        if len(key) != 33 or key[0] != ALG_ED25519 or not _valid_name(parts[2]):
            raise damaged
        signer = cls(parts[2], key[1:])
        if signer.verifier.key_id.hex() != parts[3]:
            raise damaged
        return signer

    def private_text(self) -> str:
        seed = self._private.private_bytes_raw()
        return f"{PRIVATE_PREFIX}{self.name}+{self.verifier.key_id.hex()}+{b64(bytes([ALG_ED25519]) + seed)}\n"

    def sign(self, text: bytes) -> bytes:
        return self._private.sign(text)


def sign_note(text: str, signer: Signer) -> str:
    """text as a C2SP signed note with one signature line by signer."""
    signature = signer.sign(text.encode("utf-8"))
    return f"{text}\n{SIGNATURE_DASH}{signer.name} {b64(signer.verifier.key_id + signature)}\n"


def open_checkpoint(note: str, verifier: Verifier) -> Checkpoint:
    """The checkpoint in a signed note, once verifier's signature on it is checked; ProofFailed saying what is wrong."""
    text = _verified_text(note, verifier)
    lines = text.split("\n")[:-1]  # the text ends in a newline
    if len(lines) != 3:
        raise ProofFailed("the checkpoint does not have exactly the lines origin, size and root hash")
    origin, size_text, root_text = lines
    if not origin:
        raise ProofFailed("the checkpoint has no origin line")
    if not size_text.isdigit() or not size_text.isascii() or (size_text != "0" and size_text.startswith("0")):
        raise ProofFailed(f"the checkpoint's tree size {size_text!r} is not a decimal number")
    root = unb64(root_text, "the checkpoint's root hash")
    if len(root) != 32:
        raise ProofFailed("the checkpoint's root hash is not 32 bytes")
    return Checkpoint(origin, int(size_text), root, note)


def _verified_text(note: str, verifier: Verifier) -> str:
    """The note's text, if one of its signature lines is verifier's and checks out (C2SP signed-note)."""
    if not note.endswith("\n"):
        raise ProofFailed("the checkpoint note does not end with a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise ProofFailed("the checkpoint note has no signature block")
    text, signature_block = note[: split + 1], note[split + 2 :]
    if not text or any(char != "\n" and (ord(char) < 0x20 or ord(char) == 0x7F) for char in text):
        raise ProofFailed("the checkpoint's text is empty or holds control characters")
    found_ours = False
    for line in signature_block.split("\n")[:-1]:
        if not line.startswith(SIGNATURE_DASH):
            raise ProofFailed("the checkpoint note has a malformed signature line")
        name, _, encoded = line[len(SIGNATURE_DASH) :].partition(" ")
        if not _valid_name(name) or " " in encoded:
            raise ProofFailed("the checkpoint note has a malformed signature line")
        raw = unb64(encoded, "a checkpoint signature")
        if len(raw) < 5:
            raise ProofFailed("a checkpoint signature is too short")
        if name != verifier.name or raw[:4] != verifier.key_id:
            continue  # another signer's line (a witness): not ours to check
        if len(raw) != 68 or not verifier.check(text.encode("utf-8"), raw[4:]):
            raise ProofFailed(f"the checkpoint's signature by {name} does not verify: the checkpoint was altered or forged")
        found_ours = True
    if not found_ours:
        raise ProofFailed(f"the checkpoint is not signed by the key {verifier.name}+{verifier.key_id.hex()}")
    return text
