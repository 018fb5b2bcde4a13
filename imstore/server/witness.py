"""The remote CLI as a witness: each server's last checkpoint, checked before every remote command (DESIGN P7).

As immudb's client keeps its last verified state and ssh its known_hosts, the
CLI keeps per server URL the verifier key it saw first and the newest
checkpoint it has checked. Each command first asks the server for a
consistency proof from that checkpoint to its checkpoint now and checks it: a
server that rewrote, cut or rolled back its history, or signs with another key,
is caught on the next call (ProofFailed, exit 5).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoint import Verifier, open_checkpoint
from ..errors import Forbidden, ImstoreError, InvalidInput, NotAuthorised, ProofFailed, from_os_error
from ..fsio import atomic_write
from ..paths import user_state_path
from ..proofcheck import check_document
from ..proofs import render

if TYPE_CHECKING:
    from .client import RemoteStore

__all__ = ["check_history", "pinned_key", "state_file"]


def state_file(url: str) -> Path:
    return user_state_path("imstore") / "servers" / f"{hashlib.sha256(url.encode()).hexdigest()[:32]}.json"


def _load(path: Path) -> dict | None:
    try:
        state = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ImstoreError(f"cannot read the remote CLI's state {path}: {exc} (remove it to start trusting the server afresh)") from None
    if not isinstance(state, dict) or not all(isinstance(state.get(name), str) for name in ("url", "key", "checkpoint")):
        raise ImstoreError(f"the remote CLI's state {path} is damaged (remove it to start trusting the server afresh)")
    return state


def _save(path: Path, url: str, key: str, note: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(path, json.dumps({"url": url, "key": key, "checkpoint": note}).encode(), 0o600, durable=False)
    except OSError as exc:
        raise from_os_error(exc, f"saving the server's checkpoint in {path}") from None


def pinned_key(url: str) -> str | None:
    """The verifier key pinned for the server at url, if it was ever checked."""
    state = _load(state_file(url))
    return state["key"] if state is not None else None


def check_history(remote: RemoteStore) -> None:
    """Check that the server's log extends the last checkpoint we saw from it; then remember its checkpoint now.

    The first contact pins the server's key (trust on first use). A server that cannot
    answer now (503, or damage on its side) only earns a warning: the command goes on, unchecked.
    """
    path = state_file(remote.base)
    saved = _load(path)  # a damaged state file is an error of its own, never a reason to skip the check
    try:
        if saved is None:
            served = remote._json("GET", "/v1/checkpoint")
            verifier = Verifier.parse(served["key"])
            _save(path, remote.base, str(verifier), open_checkpoint(served["checkpoint"], verifier).note)
            return
        verifier = Verifier.parse(saved["key"])
        old = open_checkpoint(saved["checkpoint"], verifier)
        answer = remote.consistency_from(old.size)
        document = {"checkpoint": answer["checkpoint"], "old": old.note, "consistency": answer["consistency"]}
        proven = check_document(render(document), verifier)
        if proven.checkpoint.size > old.size:
            _save(path, remote.base, saved["key"], proven.checkpoint.note)
    except ProofFailed as exc:
        raise ProofFailed(
            f"the server at {remote.base} does not extend the history it showed before: {exc}."
            f" If that is intended (a store restored on purpose, a new key), remove {path}"
        ) from None
    except (KeyError, TypeError, InvalidInput) as exc:
        raise ProofFailed(f"the server at {remote.base} answered something that is not a checkpoint or a proof ({exc})") from None
    except (NotAuthorised, Forbidden):
        raise  # the command itself would fail the same way
    except ImstoreError as exc:  # down (503) or damaged: the command may still be answered (a cached read); say so
        remote.warnings.append(f"the server's history was not checked this time: {exc}")
