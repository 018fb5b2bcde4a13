"""API tokens for serve: only their SHA-256 hashes are kept, in STORE/tokens (mode 0600).

A token is 256 random bits, so a plain SHA-256 is enough (no password stretching
needed) and lets the gateway compare hashes with `hmac.compare_digest` in
constant time. Every kind of bad token gets the same answer.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from .. import layout
from ..errors import InvalidInput, KeyNotFound, Unavailable, from_os_error
from ..fsio import atomic_write
from ..validate import format_time

__all__ = ["TokenStore", "TokenInfo", "Authenticator", "SCOPES", "TOKENS_NAME", "token_file_warning"]

TOKENS_NAME = layout.TOKENS
SCOPES = ("read", "write", "replicate")  # replicate: read, and acknowledge frames as a standby (sync mode)
TOKEN_PREFIX = "imst_"
STORE_CONFIG = layout.CONFIG  # a store directory that has it is there (not renamed away, not unmounted)
S3_KEY_PREFIX = "IMST"  # an S3 access key id: IMST and 16 capitals or digits, 20 characters like AWS's
_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class TokenInfo:
    name: str
    scope: str
    created: str
    access_key_id: str | None = None  # an S3 key's (not secret: it names the key in a request); None for a bearer token


def token_file_warning(path: str | os.PathLike) -> str | None:
    """A warning when a file holding a token (or token hashes) can be read by other users, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # reading it says what is wrong
    if mode & 0o077 == 0:
        return None
    return (f"the token file {path} can be read by other users (mode {mode & 0o777:04o}): anyone who reads it"
            f" can use the token. Make it private: chmod 600 {path}")  # fmt: skip


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    """The token file of one store: create, list, revoke (the CLI), load (the gateway)."""

    def __init__(self, store_root: str | os.PathLike):
        self.root = Path(store_root)
        self.path = self.root / TOKENS_NAME

    def load(self) -> list[dict]:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise from_os_error(exc, f"reading {self.path}") from None
        try:
            entries = json.loads(text)["tokens"]
            return [entry for entry in entries if entry.get("scope") in SCOPES
                    and (isinstance(entry.get("sha256"), str) or isinstance(entry.get("secret_access_key"), str))]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise Unavailable(f"the token file {self.path} is damaged; remove it and create tokens again") from None

    def list(self) -> list[TokenInfo]:
        return [TokenInfo(entry["name"], entry["scope"], entry.get("created", ""), entry.get("access_key_id")) for entry in self.load()]

    def create(self, name: str, scope: str) -> str:
        """Make a new token, store its hash, and return the token (the only time it is seen)."""
        if scope not in SCOPES:
            raise InvalidInput(f"a token's scope is read, write or replicate, not {scope!r}")
        if not _NAME.match(name):
            raise InvalidInput("a token name is 1-64 characters: letters, digits, . _ @ - (not first)")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._locked():
            entries = self.load()
            if any(entry["name"] == name for entry in entries):
                raise InvalidInput(f"a token named {name!r} exists; revoke it first (imstore token revoke {name})")
            entries.append({"name": name, "scope": scope, "sha256": token_hash(token), "created": format_time(time.time_ns())})
            self._save(entries)
        return token

    def create_s3(self, name: str, scope: str) -> tuple[str, str]:
        """Make an S3 key pair, keep it (SigV4 needs the secret itself) and return (access key id, secret)."""
        if scope not in SCOPES:
            raise InvalidInput(f"a token's scope is read or write, not {scope!r}")
        if not _NAME.match(name):
            raise InvalidInput("a token name is 1-64 characters: letters, digits, . _ @ - (not first)")
        access_key_id = S3_KEY_PREFIX + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
        secret = secrets.token_urlsafe(30)  # 40 characters, like AWS's
        with self._locked():
            entries = self.load()
            if any(entry["name"] == name for entry in entries):
                raise InvalidInput(f"a token named {name!r} exists; revoke it first (imstore token revoke {name})")
            entries.append({"name": name, "scope": scope, "access_key_id": access_key_id, "secret_access_key": secret,
                            "created": format_time(time.time_ns())})  # fmt: skip
            self._save(entries)
        return access_key_id, secret

    def revoke(self, name: str) -> None:
        with self._locked():
            entries = self.load()
            kept = [entry for entry in entries if entry["name"] != name]
            if len(kept) == len(entries):
                raise KeyNotFound(f"no token named {name!r}")
            self._save(kept)

    def _locked(self):
        """flock on the store directory itself: token edits are rare and must not race."""
        from contextlib import contextmanager

        @contextmanager
        def hold():
            try:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise from_os_error(exc, f"opening {self.root}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

        return hold()

    def _save(self, entries: list[dict]) -> None:
        data = json.dumps({"tokens": entries}, indent=1).encode("utf-8")
        try:
            atomic_write(self.path, data, 0o600)
        except OSError as exc:
            raise from_os_error(exc, f"writing {self.path}") from None


class Authenticator:
    """The gateway's view of the token file, reloaded when the file changes.

    The file is looked at (a stat) at most once a second while tokens match, so a revoked token
    is refused within a second; and again at once whenever a token does not match, so a token
    created while serve runs works from its first request. A miss costs a stat, never a reload
    unless the file changed."""

    def __init__(self, tokens: TokenStore):
        self.tokens = tokens
        self._entries: list[tuple[str, str]] = []
        self._s3_keys: dict[str, tuple[str, str, str]] = {}  # access key id -> (name, secret, scope)
        self._stamp: tuple | None = None
        self._checked = 0.0
        self._refresh(force=True)

    @property
    def has_tokens(self) -> bool:
        self._refresh()
        return bool(self._entries or self._s3_keys)

    def _refresh(self, force: bool = False, now_please: bool = False) -> None:
        now = time.monotonic()
        if not force and not now_please and now - self._checked < 1.0:
            return
        self._checked = now
        # While the store itself is unavailable (F11: unmounted, renamed away, replaced by a file, EIO)
        # the tokens last read stay in force, so that its cache can go on answering reads; that loosens
        # nothing, since revoking a token means writing the token file in the store.
        try:
            status = os.stat(self.tokens.path)
            stamp = (status.st_mtime_ns, status.st_ino, status.st_size)
        except FileNotFoundError:
            if not force and not os.path.exists(self.tokens.root / STORE_CONFIG):
                return  # no file because no store: keep the tokens
            stamp = None
        except OSError:
            if force:
                raise
            return  # the store cannot be read: keep the tokens
        if stamp != self._stamp or force:
            entries = self.tokens.load() if stamp else []
            self._entries = [(entry["sha256"], entry["scope"]) for entry in entries if "sha256" in entry]
            self._s3_keys = {entry["access_key_id"]: (entry["name"], entry["secret_access_key"], entry["scope"])
                             for entry in entries if "secret_access_key" in entry}  # fmt: skip
            self._stamp = stamp

    def scope_for(self, authorization: str | None) -> str | None:
        """The scope of the bearer token in an Authorization header, or None for any bad one."""
        self._refresh()
        scheme, _, token = (authorization or "").partition(" ")
        candidate = token_hash(token.strip()) if scheme.lower() == "bearer" and token.strip() else "-"
        found = self._match(candidate)
        if found is None and candidate != "-":
            seen = self._stamp
            self._refresh(now_please=True)  # a token created since the last look works at once
            if self._stamp != seen:
                found = self._match(candidate)
        return found

    def s3_key(self, access_key_id: str) -> tuple[str, str, str] | None:
        """(name, secret, scope) of an S3 access key id, or None; a key created since the last look works at once."""
        self._refresh()
        found = self._s3_keys.get(access_key_id)
        if found is None:
            self._refresh(now_please=True)
            found = self._s3_keys.get(access_key_id)
        return found

    def _match(self, candidate: str) -> str | None:
        found = None
        for stored, scope in self._entries:  # no early exit: the time does not depend on which entry matched
            if hmac.compare_digest(stored, candidate):
                found = scope
        return found
