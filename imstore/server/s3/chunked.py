"""Decoding `aws-chunked` request bodies: signed chunks (every signature checked) and trailers.

    hex-size[;chunk-signature=SIG]\\r\\n DATA \\r\\n ... 0[;chunk-signature=SIG]\\r\\n
    [x-amz-checksum-crc32:VALUE\\r\\n ... [x-amz-trailer-signature:SIG\\r\\n]] \\r\\n

Clients differ in small ways (learned from SeaweedFS, versitygw, Garage): restic sends signed
chunks without `Content-Encoding: aws-chunked`, some end a trailer without its last CRLF. Data is
passed on as it arrives, piece by piece, as views of the received bytes (never copied); a bad chunk
signature raises before the body ends, so the put it feeds is never committed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

from .sigv4 import ChunkContext, chunk_signature, trailer_signature
from .xml import S3Error

__all__ = ["AwsChunkedBody"]

MAX_LINE = 4096  # a chunk header or trailer line
MAX_TRAILERS = 16


def _malformed(message: str) -> S3Error:
    return S3Error(400, "IncompleteBody", f"the aws-chunked body is malformed: {message}")


class AwsChunkedBody:
    """Iterate over the decoded data; afterwards `trailers` holds the trailer headers (lower-case names)."""

    def __init__(self, pieces: Iterator[bytes], signing: ChunkContext | None, trailer_expected: bool):
        self.pieces = iter(pieces)
        self.signing = signing
        self.trailer_expected = trailer_expected
        self.pending = memoryview(b"")  # the unread rest of the piece being decoded: data is passed on from it, not copied
        self.trailers: dict[str, str] = {}
        self.previous = signing.seed_signature if signing else ""
        self.decoded_size = 0

    def _fill(self) -> bool:
        piece = next(self.pieces, None)
        if piece is None:
            return False
        self.pending = memoryview(piece)
        return True

    def _line(self, required: bool = True) -> bytes | None:
        """A chunk header or trailer line, without its end (CRLF, or LF as some clients send); it may span pieces."""
        line = bytearray()
        while True:
            end = bytes(self.pending[: MAX_LINE + 1]).find(b"\n")
            if end >= 0:
                line += self.pending[:end]
                self.pending = self.pending[end + 1 :]
                return bytes(line[:-1] if line.endswith(b"\r") else line)
            line += self.pending
            self.pending = memoryview(b"")
            if len(line) > MAX_LINE:
                raise _malformed("a line is too long")
            if not self._fill():
                if not required:
                    return bytes(line) or None
                raise _malformed("the body ends inside a chunk header")

    def __iter__(self) -> Iterator[bytes]:
        while True:
            header = self._line()
            assert header is not None
            size_text, _, extension = header.partition(b";")
            try:
                size = int(size_text.strip(), 16)
            except ValueError:
                raise _malformed("a chunk size is not hexadecimal") from None
            signature = ""
            if extension.startswith(b"chunk-signature="):
                signature = extension[len(b"chunk-signature=") :].decode("ascii", "replace").strip()
            if self.signing is not None and not signature:
                raise S3Error(403, "SignatureDoesNotMatch", "a chunk of a signed streaming body has no chunk-signature")
            digest = hashlib.sha256() if self.signing is not None else None
            remaining = size
            while remaining:
                if not self.pending and not self._fill():
                    raise _malformed("the body ends inside a chunk")
                piece = self.pending[:remaining]  # a view of the received bytes (immutable): no copy
                self.pending = self.pending[len(piece) :]
                remaining -= len(piece)
                if digest is not None:
                    digest.update(piece)
                self.decoded_size += len(piece)
                yield piece
            if digest is not None:
                self._check_chunk(signature, digest.hexdigest())
            if size == 0:
                break
            if self._line() != b"":
                raise _malformed("a chunk's data is not followed by CRLF")
        self._read_trailers()

    def _check_chunk(self, signature: str, chunk_sha256: str) -> None:
        assert self.signing is not None
        expected = chunk_signature(self.signing, self.previous, chunk_sha256)
        if not hmac.compare_digest(expected, signature):
            raise S3Error(403, "SignatureDoesNotMatch", "a chunk signature does not match")
        self.previous = expected

    def _read_trailers(self) -> None:
        signed_text = b""
        trailer_signature_value = None
        for _ in range(MAX_TRAILERS + 2):
            line = self._line(required=False)
            if not line:  # the blank line that ends the body, or its end (Garage: the last CRLF may be missing)
                break
            name, colon, value = line.partition(b":")
            if not colon:
                raise _malformed("a trailer line has no ':'")
            name_text = name.strip().lower().decode("ascii", "replace")
            value_text = value.strip().decode("ascii", "replace")
            if name_text == "x-amz-trailer-signature":
                trailer_signature_value = value_text
                continue
            self.trailers[name_text] = value_text
            signed_text += f"{name_text}:{value_text}\n".encode()
        else:
            raise _malformed("too many trailer lines")
        if self.trailer_expected and self.signing is not None:
            if trailer_signature_value is None:
                raise S3Error(403, "SignatureDoesNotMatch", "the trailer of a signed streaming body has no signature")
            expected = trailer_signature(self.signing, self.previous, signed_text)
            if not hmac.compare_digest(expected, trailer_signature_value):
                raise S3Error(403, "SignatureDoesNotMatch", "the trailer signature does not match")
