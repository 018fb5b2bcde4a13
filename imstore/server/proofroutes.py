"""The worker's answers to GET /v1/checkpoint, /v1/proofs/inclusion and /v1/proofs/consistency (docs/DESIGN.md P7).

Plain functions over a Store (no aiohttp): the worker runs one in its store
thread and sends the document as JSON. The client trusts none of it until it
has checked the signature and the proof (server/witness.py, proofs.py).
"""

from __future__ import annotations

from .. import proofs
from ..errors import InvalidInput
from ..store import Store
from ..validate import parse_time, validate_key
from .headers import non_negative

__all__ = ["proof_document"]


def proof_document(store: Store, route: str, query: dict[str, str]) -> dict:
    """The document of one proof route: `checkpoint`, `inclusion` or `consistency`."""
    if route == "checkpoint":
        return {"checkpoint": proofs.checkpoint(store), "key": store.verifier_key()}
    if route == "inclusion":
        key = validate_key(query.get("key", ""))
        version, at = query.get("version"), query.get("at")
        if version is not None and at is not None:
            raise InvalidInput("give version or at, not both")
        return proofs.prove(store, key, version, parse_time(at) if at is not None else None)
    if "from" not in query:
        raise InvalidInput("give from=SIZE: the tree size of the checkpoint the proof starts at")
    return proofs.consistency_from(store, non_negative(query["from"], "from"))
