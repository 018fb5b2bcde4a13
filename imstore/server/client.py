"""RemoteStore: the Store API over HTTP, the backend of the CLI's --remote.

It has the methods the CLI calls on a local Store (put_stream, open_version,
open_object, history, ls, delete, log_records; import_source stands in for
importer.import_source, as one streamed POST /v1/import) with the same results and the
same errors (rebuilt from the server's problem documents), so each command
works unchanged against a server. Bytes stream both ways and are checked
against their hash here too: a reader raises CorruptObject rather than hand
over bytes that do not match the ETag.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from ..errors import CorruptObject, InvalidInput, RequestInProgress, Unavailable, UsageError
from ..fsio import CHUNK_SIZE
from ..hashing import blake3, validate_prefix
from ..sources import regular_file_size
from ..store import PutResult, Version
from ..validate import MAX_NUMBER, format_time, parse_version
from .headers import encode_text
from .protocol import (
    DAMAGED_HEADER,
    MESSAGE_HEADER,
    META_HEADER,
    STALE_HEADER,
    VERSION_HEADER,
    error_from_problem,
    key_path,
    object_id_of_etag,
    put_result_from_document,
    version_from_document,
)

__all__ = ["RemoteStore", "RemoteReader"]

RETRIES = 3
STALE_WARNING = "the server's store is unavailable: this latest version comes from its cache and may be stale"
DAMAGED_WARNING = "the server's log is damaged after this version: a newer version may have been lost there (verify on the server names it)"


class RemoteReader:
    """Reads one object from the server, checking every byte against its hash (like ObjectReader)."""

    def __init__(self, remote: RemoteStore, object_id: str, size: int, response: aiohttp.ClientResponse | None):
        self.remote = remote
        self.object_id = object_id
        self.size = size
        self._response = response  # the first pass reuses the response that told us the hash

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        response, self._response = self._response, None
        if response is None:
            response = self.remote._run(self.remote._request("GET", f"/v1/objects/{self.object_id}"))
        hasher, seen = blake3(), 0
        try:
            while True:
                try:
                    chunk = self.remote._run(response.content.read(chunk_size))
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise Unavailable(f"the download of {self.object_id} broke off: {exc}") from None
                if not chunk:
                    break
                hasher.update(chunk)
                seen += len(chunk)
                yield chunk
        finally:
            response.release()
        if seen != self.size or hasher.hexdigest() != self.object_id:
            raise CorruptObject(f"the bytes received for {self.object_id} do not hash to it")

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def verify(self) -> None:
        for _chunk in self.chunks():
            pass

    def close(self) -> None:
        if self._response is not None:
            self._response.release()
            self._response = None


class RemoteStore:
    """A store behind `imstore serve`, used like a local Store (a context manager)."""

    def __init__(self, url: str, token: str | None, cacert: str | os.PathLike | None = None):
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--remote takes an http:// or https:// URL, not {url!r}")
        self._ssl = _trusting(cacert) if cacert is not None else None
        self.base = url.rstrip("/")
        self.token = token
        self.warnings: list[str] = []
        self.root = self.base
        self._loop = asyncio.new_event_loop()
        self._session: aiohttp.ClientSession | None = None
        self._readers: list[RemoteReader] = []

    def notes(self) -> list[str]:
        """Store.notes' counterpart (StoreAPI): a server's read cache keeps its notes on the server."""
        return []

    # ------------------------------------------------------------ plumbing
    def _run(self, coroutine):
        return self._loop.run_until_complete(coroutine)

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        if self._session is not None:
            self._run(self._session.close())
            self._session = None
        self._loop.close()

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    async def _request(self, method: str, path: str, *, query: dict | None = None, headers: dict | None = None, data=None):
        """Send one request; an error status becomes the store's own error."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
                skip_auto_headers=("Content-Type",),
                auto_decompress=False,
                connector=aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None,
            )
        query = {name: value for name, value in (query or {}).items() if value is not None}
        url = URL(self.base + path + ("?" + urlencode(query) if query else ""), encoded=True)
        all_headers = dict(headers or {})
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = await self._session.request(method, url, headers=all_headers, data=data)
        except aiohttp.ClientConnectorError as exc:
            raise Unavailable(f"cannot reach the server at {self.base}: {exc.os_error.strerror or exc}") from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise Unavailable(f"the server at {self.base} failed: {exc or type(exc).__name__}") from None
        if response.status >= 400:
            body = await response.read()
            response.release()
            raise error_from_problem(response.status, body)
        if response.headers.get(STALE_HEADER) == "1":
            self.warnings.append(STALE_WARNING)
        if response.headers.get(DAMAGED_HEADER) == "1":
            self.warnings.append(DAMAGED_WARNING)
        return response

    def _json(self, method: str, path: str, **options):
        async def call():
            response = await self._request(method, path, **options)
            try:
                return await response.json(content_type=None)
            finally:
                response.release()

        return self._run(call())

    # ------------------------------------------------------------ writing
    def put_stream(
        self,
        key: str,
        source,
        *,
        content_type: str | None = None,
        meta: dict | None = None,
        message: str | None = None,
        if_version: int | str | None = None,
        if_absent: bool = False,
        max_size: int | None = None,
    ) -> PutResult:
        headers = {"Idempotency-Key": uuid.uuid4().hex, **_write_headers(message, if_version)}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if meta:
            headers[META_HEADER] = encode_text(json.dumps(meta, ensure_ascii=False))
        if if_absent:
            headers["If-None-Match"] = "*"
        size = regular_file_size(source)
        if size is not None:
            headers["Content-Length"] = str(size)
        start = source.tell() if size is not None else None
        path = key_path("/v1/keys/", key)

        def send():
            if start is not None:
                source.seek(start)  # a regular file can be sent again
            return self._json("PUT", path, headers=headers, data=_body(source, max_size))

        # Only a body we can send again is retried; the Idempotency-Key makes the retry safe.
        document = _with_retries(send, attempts=RETRIES if start is not None else 1)
        return put_result_from_document(document)

    def delete(self, key: str, *, message: str | None = None, if_version: int | str | None = None) -> Version:
        headers = {"Idempotency-Key": uuid.uuid4().hex, **_write_headers(message, if_version)}
        path = key_path("/v1/keys/", key)
        return version_from_document(_with_retries(lambda: self._json("DELETE", path, headers=headers), attempts=RETRIES))

    def import_source(
        self,
        source: str,
        *,
        stdin=None,
        prefix: str = "",
        jobs: int | None = None,
        message: str | None = None,
        skip_errors: bool = False,
        follow_symlinks: bool = False,
        progress=None,
    ):
        """Import SOURCE as one atomic batch on the server: one POST /v1/import, its body streamed (see upload.py).

        The summary is the server's, plus what was left out here (walk warnings, unreadable files).
        jobs is not used: the server reads one stream. progress(done, total) counts bytes sent.
        """
        # Here, not at the top: the importer (tarfile, sources) costs ~5 ms that `get --remote` need not pay.
        from ..importer import ImportSummary
        from .upload import plan_upload

        walk_warnings: list[str] = []
        upload = plan_upload(source, stdin, walk_warnings.append, follow_symlinks)
        headers = {"Idempotency-Key": uuid.uuid4().hex, "Content-Type": upload.content_type}
        if upload.size is not None:
            headers["Content-Length"] = str(upload.size)
        if message is not None:
            headers[MESSAGE_HEADER] = encode_text(message)
        query = {"prefix": prefix or None, "skip_errors": "1" if skip_errors else None, "name": upload.name}
        skipped: list[str] = []

        def send():
            skipped.clear()
            failure: list[BaseException] = []
            body = _upload_body(upload.chunks(prefix, skip_errors, skipped.append), failure, progress, upload.total)
            try:
                return self._json("POST", "/v1/import", query=query, headers=headers, data=body)
            except Exception:
                if failure:  # our own body failed (an unreadable file): that is the error, not the cut connection
                    raise failure[0] from None
                raise

        document = _with_retries(send, attempts=RETRIES if upload.repeatable else 1)
        fields = ("added", "unchanged", "skipped", "files", "bytes_read", "bytes_written", "bytes_saved", "pack")
        summary = ImportSummary(**{name: document[name] for name in fields if name in document})
        summary.warnings = [*walk_warnings, *skipped, *document.get("warnings", [])]
        summary.skipped += len(walk_warnings) + len(skipped)
        return summary

    # ------------------------------------------------------------ reading
    def open_version(self, key: str, version: int | str | None = None, at: int | None = None) -> tuple[Version, RemoteReader]:
        query = {"version": str(version) if version is not None else None, "at": _iso(at) if at is not None else None}
        response = self._run(self._request("GET", key_path("/v1/keys/", key), query=query))
        object_id = object_id_of_etag(response.headers.get("ETag", ""))  # "v7-<id>" (H1)
        number = int(response.headers.get(VERSION_HEADER, "0"))
        size = response.content_length or 0
        found = Version(key, number, 0, "put", object_id, size, 0, response.headers.get("Content-Type"))
        reader = RemoteReader(self, object_id, size, response)
        self._readers.append(reader)
        return found, reader

    def open_object(self, hash_or_prefix: str) -> RemoteReader:
        response = self._run(self._request("GET", "/v1/objects/" + _hex_only(hash_or_prefix)))
        reader = RemoteReader(self, response.headers.get("ETag", "").strip('"'), response.content_length or 0, response)
        self._readers.append(reader)
        return reader

    def answer_lines(self, lines, kind: str, *, with_bytes: bool):
        """get/cat --batch: the answers to lines over one pipelined connection (readbatch.serve_lines)."""
        from .pipeline import pipelined_answers

        return pipelined_answers(self.base, self.token, self._ssl, lines, kind, with_bytes, self.warnings.append)

    def history(self, key: str, limit: int | None = None) -> list[Version]:
        documents = self._json("GET", key_path("/v1/history/", key), query={"limit": limit})
        return [version_from_document(document) for document in documents]

    def ls(self, prefix: str = "", *, include_deleted: bool = False, limit: int | None = None) -> list[Version]:
        query = {"prefix": prefix or None, "all": "1" if include_deleted else None}
        return [version_from_document(document) for document in self._pages("/v1/keys", query, limit)]

    def log_records(self, after: int = 0, limit: int | None = None) -> list[Version]:
        documents = self._pages("/v1/log", {"after": after or None}, limit)
        return [version_from_document(document) for document in documents]

    def _pages(self, path: str, query: dict, limit: int | None) -> list[dict]:
        """Every entry of a paged listing (up to limit), following its `Link: <...>; rel="next"` page by page."""

        async def call() -> list[dict]:
            documents: list[dict] = []
            # The largest limit: a server pages it (PAGE_MAX a page, with next links), one from before pages
            # answers it whole; asking for PAGE_MAX would quietly cut such a server's answer there.
            target = path + "?" + urlencode(
                {**{name: value for name, value in query.items() if value is not None},
                 "limit": str(limit if limit is not None else MAX_NUMBER)},
                quote_via=quote, safe="",
            )  # fmt: skip
            seen = set()
            while target not in seen:  # a link back to a page already read would loop: stop there
                seen.add(target)
                response = await self._request("GET", target)
                try:
                    page = await response.json(content_type=None)
                    following = _next_target(response.headers.get("Link", ""))
                except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                    raise Unavailable(f"the server at {self.base} broke off a listing: {exc or type(exc).__name__}") from None
                finally:
                    response.release()
                documents.extend(page)
                if limit is not None and len(documents) >= limit:
                    return documents[:limit]
                if not page or not following.startswith(path + "?"):  # only ever the same listing, on this server
                    return documents
                target = following
            raise Unavailable(f"the server at {self.base} sent a listing whose next page is one already read")

        return self._run(call())

    # ------------------------------------------------------------ local-only operations
    def verify(self, progress=None):
        raise UsageError("verify reads every file of the store: run it on the server's machine, not with --remote")

    def reindex(self):
        raise UsageError("reindex rebuilds a local index: run it on the server's machine, not with --remote")

    # ------------------------------------------------------------ proofs: nothing here is trusted until checked
    # (proofcheck.check_document with the pinned key; server/witness.py checks history before each command)
    def verifier_key(self) -> str:
        """The verifier key pinned for this server on first use (the one it sends now if none is pinned yet)."""
        from .witness import pinned_key

        return pinned_key(self.base) or self._json("GET", "/v1/checkpoint")["key"]

    def checkpoint(self) -> str:
        return self._json("GET", "/v1/checkpoint")["checkpoint"]

    def prove(self, key: str, version: int | str | None = None, at: int | None = None) -> dict:
        query = {"key": key, "version": version, "at": _iso(at) if at is not None else None}
        return self._json("GET", "/v1/proofs/inclusion", query=query)

    def prove_since(self, old_checkpoint: str) -> dict:
        from ..checkpoint import note_size

        answer = self.consistency_from(note_size(old_checkpoint))
        return {"checkpoint": answer["checkpoint"], "old": old_checkpoint, "consistency": answer["consistency"]}

    def consistency_from(self, size: int) -> dict:
        """The server's checkpoint now and its consistency proof from a tree of size records (GET /v1/proofs/consistency)."""
        return self._json("GET", "/v1/proofs/consistency", query={"from": size})


_NEXT_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?(?:\s*[;,]|\s*$)')


def _next_target(link_header: str) -> str:
    """The target of the rel="next" link in a Link header, exactly as sent (already percent-encoded), or ""."""
    found = _NEXT_LINK.search(link_header)
    return found.group(1) if found else ""


def _with_retries(send, attempts: int):
    """Retry a write whose worker died mid-request (503/409 with the same Idempotency-Key)."""
    for attempt in range(attempts):
        try:
            return send()
        except (Unavailable, RequestInProgress):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _write_headers(message: str | None, if_version: int | str | None) -> dict:
    headers = {}
    if message is not None:
        headers[MESSAGE_HEADER] = encode_text(message)
    if if_version is not None:
        number = 0 if str(if_version).strip() == "0" else parse_version(if_version)
        headers["If-Match"] = f'"v{number}"'
    return headers


def _hex_only(text: str) -> str:
    """Object ids are hex; anything else is refused here so it cannot alter the path."""
    return validate_prefix(text)


def _iso(time_ns: int) -> str:
    seconds, rest = divmod(time_ns, 1_000_000_000)
    return format_time(seconds * 1_000_000_000)[:-5] + f".{rest // 1000:06d}Z"


UPLOAD_PIECE = 256 << 10


async def _upload_body(chunks, failure: list, progress, total: int | None):
    """Blocking chunks as an async body, gathered into pieces of UPLOAD_PIECE; an error is kept in failure.

    The error is re-raised so the request is cut off (the server then commits nothing); the caller
    reports the kept error rather than the connection error aiohttp makes of it.
    """
    pending, sent = bytearray(), 0
    try:
        for chunk in chunks:
            pending += chunk
            if len(pending) >= UPLOAD_PIECE:
                sent += len(pending)
                yield bytes(pending)
                pending.clear()
                if progress is not None:
                    progress(sent, total)
        if pending:
            sent += len(pending)
            yield bytes(pending)
        if progress is not None:
            progress(sent, total)
    except Exception as exc:
        failure.append(exc)
        raise


async def _body(source, max_size: int | None):
    """The put's bytes as an async stream (reads block the loop, which serves only this one request)."""
    sent = 0
    chunks = iter(lambda: source.read(CHUNK_SIZE), b"") if hasattr(source, "read") else source
    for chunk in chunks:
        sent += len(chunk)
        if max_size is not None and sent > max_size:
            raise InvalidInput(f"content is larger than the limit of {max_size} bytes")
        yield chunk


def _trusting(cacert: str | os.PathLike):
    """An SSL context that trusts the system's authorities and the certificates in cacert (--cacert)."""
    try:
        return ssl.create_default_context(cafile=os.fspath(cacert))
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot use --cacert {cacert}: {getattr(exc, 'strerror', None) or exc}") from None
