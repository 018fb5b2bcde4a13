"""The digests an S3 upload must match before it is committed: Content-MD5, x-amz-content-sha256 and
every x-amz-checksum-* (in a header or a trailer). The MD5 is always computed: it is the ETag.

CRC32C and CRC64NVME have no C implementation in the standard library: awscrt (AWS's own C library,
which botocore uses too; a dependency) computes them at ~1.5 GB/s. Without it a byte table here gives
the same results at ~12 MB/s. CRC32 (aws-cli's and boto3's default) comes from ISA-L (isal, carry-less
multiplication, ~10 GB/s here) rather than zlib (~2 GB/s): a 1 GiB upload spends 0.1 s on it, not 0.5 s.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import zlib
from collections.abc import Iterable, Iterator, Mapping

from ... import md5lanes
from .xml import S3Error

__all__ = ["Digests", "CHECKSUMS", "check_whole_body", "multipart_checksum"]

CHECKSUMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")


def _table(polynomial: int) -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ polynomial if crc & 1 else crc >> 1
        table.append(crc)
    return table


class _ReflectedCrc:
    """A reflected CRC with all-ones initial value and final xor (CRC32C and CRC64NVME both are)."""

    def __init__(self, width: int, polynomial: int, accelerated=None):
        self.width = width
        self.mask = (1 << width) - 1
        self.table = _table(polynomial)
        self.crc = 0
        self.accelerated = accelerated

    def update(self, data: bytes) -> None:
        if self.accelerated is not None:
            self.crc = self.accelerated(data, self.crc)
            return
        crc = self.crc ^ self.mask
        table = self.table
        for byte in data:
            crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        self.crc = crc ^ self.mask

    def digest(self) -> bytes:
        return self.crc.to_bytes(self.width // 8, "big")


def _crc32_function():
    try:
        from isal.isal_zlib import crc32  # type: ignore[import-not-found]
    except ImportError:
        return zlib.crc32
    return crc32


_CRC32 = _crc32_function()


class _Crc32:
    def __init__(self, function=_CRC32):
        self.crc = 0
        self.function = function

    def update(self, data: bytes) -> None:
        self.crc = self.function(data, self.crc)

    def digest(self) -> bytes:
        return self.crc.to_bytes(4, "big")


def _accelerated(name: str):
    try:
        from awscrt import checksums  # type: ignore[import-not-found]
    except ImportError:
        return None
    return getattr(checksums, name, None)


def _hasher(algorithm: str):
    if algorithm == "crc32":
        return _Crc32()
    if algorithm == "crc32c":
        return _ReflectedCrc(32, 0x82F63B78, _accelerated("crc32c"))
    if algorithm == "crc64nvme":
        return _ReflectedCrc(64, 0x9A6C9329AC4BC9B5, _accelerated("crc64nvme"))
    return hashlib.new(algorithm)


_REFLECTED = {"crc32": (32, 0xEDB88320), "crc32c": (32, 0x82F63B78), "crc64nvme": (64, 0x9A6C9329AC4BC9B5)}


def _combine_crc(algorithm: str, first: int, second: int, second_length: int) -> int:
    """The CRC of A+B from crc(A), crc(B) and len(B): zlib's crc32_combine, for any reflected CRC (GF(2) arithmetic)."""
    width, polynomial = _REFLECTED[algorithm]
    top = 1 << (width - 1)  # x^0 in the reflected order

    def multiply(a: int, b: int) -> int:  # a*b modulo the polynomial
        product, bit = 0, top
        while bit and a & ((bit << 1) - 1):  # (stops once no lower bit of a is left)
            if a & bit:
                product ^= b
            bit >>= 1
            b = (b >> 1) ^ polynomial if b & 1 else b >> 1
        return product

    power, square, bits = top, top >> 1, second_length * 8  # x^0, x^1: power becomes x^(8 len(B))
    while bits:
        if bits & 1:
            power = multiply(square, power)
        square, bits = multiply(square, square), bits >> 1
    return multiply(power, first) ^ second


def multipart_checksum(algorithm: str, kind: str, checksums: list[bytes], sizes: list[int]) -> str:
    """A multipart object's checksum from its parts': COMPOSITE, the checksum of the part checksums with "-N";
    FULL_OBJECT (CRCs only), the CRC of the whole object, combined from the parts' without reading them."""
    if kind == "FULL_OBJECT":
        width = _REFLECTED[algorithm][0]
        crc = int.from_bytes(checksums[0], "big")
        for checksum, size in zip(checksums[1:], sizes[1:], strict=True):
            crc = _combine_crc(algorithm, crc, int.from_bytes(checksum, "big"), size)
        return base64.b64encode(crc.to_bytes(width // 8, "big")).decode()
    hasher = _hasher(algorithm)
    hasher.update(b"".join(checksums))
    return f"{base64.b64encode(hasher.digest()).decode()}-{len(checksums)}"


def _bad_digest(what: str) -> S3Error:
    return S3Error(400, "BadDigest", f"The {what} you specified did not match the calculated checksum.")


def _base64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        # S3: a Content-MD5 that is not base64 is InvalidDigest; a checksum that is not, a BadDigest like a wrong one
        code = "InvalidDigest" if what == "Content-MD5" else "BadDigest"
        raise S3Error(400, code, f"The {what} you specified is not valid base64.") from None


class Digests:
    """Digests of one upload's bytes, checked against what the client declared."""

    def __init__(self, headers: Mapping[str, str], payload_sha256: str | None):
        self.md5 = md5lanes.new()  # hashed with the other uploads' MD5s in SIMD lanes
        self.expected: dict[str, bytes] = {}
        content_md5 = headers.get("Content-MD5")
        if content_md5 is not None:
            self.expected["md5"] = _base64(content_md5, "Content-MD5")
        if payload_sha256 is not None:
            try:
                self.expected["payload-sha256"] = bytes.fromhex(payload_sha256)
            except ValueError:
                raise S3Error(400, "InvalidArgument", "x-amz-content-sha256 is not a SHA-256 in hex") from None
        self.trailer_names: list[str] = []
        for algorithm in CHECKSUMS:
            value = headers.get(f"x-amz-checksum-{algorithm}")
            if value is not None:
                self.expected[algorithm] = _base64(value, f"x-amz-checksum-{algorithm}")
        for name in headers.get("x-amz-trailer", "").split(","):
            name = name.strip().lower()
            if name.startswith("x-amz-checksum-") and name[len("x-amz-checksum-") :] in CHECKSUMS:
                self.trailer_names.append(name[len("x-amz-checksum-") :])
        wanted = set(self.expected) | set(self.trailer_names)
        self.hashers = {algorithm: _hasher(algorithm) for algorithm in CHECKSUMS if algorithm in wanted}
        if "payload-sha256" in self.expected:
            self.hashers.setdefault("payload-sha256", hashlib.sha256())
        self.size = 0

    def watch(self, pieces: Iterable[bytes], trailers: Mapping[str, str] | None = None) -> Iterator[bytes]:
        """Pass pieces on, hashing them; before the last is handed over, raise BadDigest on any mismatch.

        trailers: the decoder's trailer dict, read once the pieces have ended."""
        held = None
        for piece in pieces:
            self.md5.update(piece)
            for hasher in self.hashers.values():
                hasher.update(piece)
            self.size += len(piece)
            if held is not None:
                yield held
            held = piece
        self.check(trailers or {})
        if held is not None:
            yield held

    def check(self, trailers: Mapping[str, str]) -> None:
        for algorithm in self.trailer_names:
            value = trailers.get(f"x-amz-checksum-{algorithm}")
            if value is None:
                raise S3Error(400, "InvalidRequest", f"the trailer x-amz-checksum-{algorithm} was announced but not sent")
            self.expected[algorithm] = _base64(value, f"x-amz-checksum-{algorithm}")
        for algorithm, expected in self.expected.items():
            actual = self.md5.digest() if algorithm == "md5" else self.hashers[algorithm].digest()
            if not hmac.compare_digest(actual, expected):
                if algorithm == "payload-sha256":
                    raise S3Error(400, "XAmzContentSHA256Mismatch", "x-amz-content-sha256 does not match the body's SHA-256.")
                raise _bad_digest("Content-MD5" if algorithm == "md5" else f"x-amz-checksum-{algorithm}")

    def checksum_headers(self) -> dict[str, str]:
        """The x-amz-checksum-* of the upload the client asked for, to answer with."""
        return {f"x-amz-checksum-{a}": base64.b64encode(self.hashers[a].digest()).decode() for a in CHECKSUMS if a in self.hashers}


def check_whole_body(headers: Mapping[str, str], body: bytes) -> None:
    """A body read whole (a CORS configuration, a DeleteObjects list): its Content-MD5 and x-amz-checksum-*, if sent,
    checked (400 BadDigest)."""
    for _piece in Digests(headers, None).watch([body]):
        pass
