"""What a store directory holds, in one table: the replicated truth and the node-local state.

Every module that needs a name inside the store takes it from here (borg's
`ns_config` is the model). A standby copies REPLICATED byte for byte; NODE_LOCAL
is derived from it or belongs to one server, and is rebuilt or forgotten.

    config               msgpack {format, store_id, hash, created}; created once, by link
    objects/ab/<62 hex>  loose objects, 0444, placed by link, never replaced
    objects/pack/        pack-<40 hex>.pack and .idx (the pack renamed first, the index last)
    log/<20 digits>.log  the frames; log/LOCK is the writers' flock
    index.sqlite         derived from the log; rebuilt when missing or wrong
    import-cache/        stat caches of imported trees (disposable)
    idempotency.sqlite   the server's Idempotency-Key ledger
    tokens               the server's access tokens (JSON, 0600): shipped whole to standbys
    checkpoint.key       this node's checkpoint signing key (Ed25519, Go note form, 0600)
    checkpoint.latest    the checkpoint signed last, with its BLAKE3 (a cache: disposable)
    upstream             where this copy pulls from (imstore clone/pull): node-local
    s3-uploads/          parts of unfinished S3 multipart uploads (node-local, temporary)
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import msgpack

from .errors import CorruptStore, ImstoreError, InvalidInput, NoStore, Unavailable, from_os_error
from .fsio import atomic_write, fsync_dir, require_directory
from .log import LOCK_NAME, SEGMENT_NAME

__all__ = [
    "FORMAT", "CONFIG", "OBJECTS", "PACKS", "LOG", "INDEX", "IMPORT_CACHE", "LEDGER", "TOKENS", "SIGNING_KEY",
    "CHECKPOINT_CACHE", "UPSTREAM", "ROLE", "ORPHANS", "S3_UPLOADS", "REPLICATED", "NODE_LOCAL", "SHIPPED",
    "is_store_entry", "create_store", "parse_config", "check_writable",
]  # fmt: skip

FORMAT = 1

CONFIG = "config"
OBJECTS = "objects"
PACKS = "objects/pack"
LOG = "log"
LOG_SEGMENT = f"{LOG}/{SEGMENT_NAME}"
LOG_LOCK = f"{LOG}/{LOCK_NAME}"
INDEX = "index.sqlite"
IMPORT_CACHE = "import-cache"
LEDGER = "idempotency.sqlite"
TOKENS = "tokens"
SIGNING_KEY = "checkpoint.key"
CHECKPOINT_CACHE = "checkpoint.latest"
UPSTREAM = "upstream"
ROLE = "role"  # "primary" (absent: a store takes local writes), "standby" (R7, R9)
ORPHANS = f"{LOG}/orphans"  # an old primary's frames the new primary never had, kept read-only (R11)
S3_UPLOADS = "s3-uploads"

REPLICATED = (CONFIG, OBJECTS, LOG)  # the truth: a standby copies it byte for byte
# Derived or per server: rebuilt or forgotten (a node signs checkpoints with its own key).
NODE_LOCAL = (INDEX, IMPORT_CACHE, LEDGER, SIGNING_KEY, CHECKPOINT_CACHE, UPSTREAM, ROLE, S3_UPLOADS)
# The deployment's state, not history: a standby takes the latest copy whole (one token works on every node).
SHIPPED = (TOKENS,)

# What a half-made store may hold while another process is creating it.
_CREATION_ENTRIES = {OBJECTS, LOG, CONFIG}


def is_store_entry(name: str) -> bool:
    """Names a half-made store may hold (another process is creating it right now)."""
    return name in _CREATION_ENTRIES or name.startswith(".tmp-" + CONFIG)


def create_store(root: Path, config: bytes | None = None) -> bool:
    """Lay out a new store at root; True if this call created it, False if another process did first.

    config: the exact bytes of another store's config (a clone: the same store id), else a new one.

    The layout is made durable first and `config` is linked into place last, so a
    directory with a config is always a complete store. Two processes creating
    the same store at once end up sharing one config.
    """
    try:
        if root.exists():
            if not root.is_dir():
                raise InvalidInput(f"{root} exists and is not a directory")
            if any(not is_store_entry(name) for name in os.listdir(root)):
                raise InvalidInput(f"{root} is a non-empty directory that is not a store; refusing to init there")
        root.mkdir(parents=True, exist_ok=True)
        for directory in (OBJECTS, PACKS, LOG):
            (root / directory).mkdir(exist_ok=True)
        (root / LOG_SEGMENT).touch()
        (root / LOG_LOCK).touch()
        for directory in (PACKS, OBJECTS, LOG):
            fsync_dir(root / directory)
        if config is None:
            fields = {"format": FORMAT, "store_id": str(uuid.uuid4()), "hash": "blake3", "created": time.time_ns()}
            config = msgpack.packb(fields, use_bin_type=True)
        created = atomic_write(root / CONFIG, config, 0o444, create_only=True)
        fsync_dir(root)
        fsync_dir(root.parent)
    except OSError as exc:
        raise from_os_error(exc, f"creating a store at {root}") from None
    return created


def parse_config(raw: bytes, path: Path) -> dict:
    """The config's fields, checked: a damaged config is CorruptStore, another format a clear refusal."""
    try:
        config = msgpack.unpackb(raw, raw=False)
        if not isinstance(config, dict) or not isinstance(config.get("store_id"), str):
            raise ValueError
    except Exception:
        raise CorruptStore(f"the store's config file is damaged: {path}") from None
    if config.get("format") != FORMAT:
        raise ImstoreError(f"store format {config.get('format')!r} is not supported (this imstore reads {FORMAT})")
    return config


def may_create_at(root: Path) -> bool:
    """Is root absent, or a directory holding nothing but what a half-made store may hold?"""
    return not root.exists() or (root.is_dir() and all(is_store_entry(name) for name in os.listdir(root)))


def check_writable(root: Path) -> None:
    """Fail fast, before anything is written, when the store's directories are not there to take a write."""
    for directory, what in ((root / OBJECTS, "its objects directory"), (root / LOG, "its log directory")):
        try:
            require_directory(directory, what)
        except Unavailable as exc:
            raise Unavailable(f"cannot write: the store is unavailable: {exc}") from None


def no_store_error(root: Path) -> NoStore:
    return NoStore(f"no store at {root} (create one with: imstore init {root})")
