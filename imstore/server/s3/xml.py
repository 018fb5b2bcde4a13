"""S3's XML documents: the error document and the answers of the operations, built with ElementTree."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime

from ...errors import ImstoreError

__all__ = ["S3Error", "NAMESPACE", "error_document", "document", "acl_document", "iso_time", "http_time", "error_from_imstore",
           "parse"]  # fmt: skip

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
XML_TYPE = "application/xml"
_XSI = "http://www.w3.org/2001/XMLSchema-instance"


class S3Error(Exception):
    """An S3 error answer: HTTP status, S3 code and message."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_document(code: str, message: str, resource: str = "", request_id: str = "") -> bytes:
    root = ET.Element("Error")
    for name, value in (("Code", code), ("Message", message), ("Resource", resource), ("RequestId", request_id)):
        ET.SubElement(root, name).text = value
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def _fill(parent: ET.Element, children: Iterable[tuple[str, object]]) -> None:
    for name, value in children:
        if value is None:
            continue
        if isinstance(value, list):  # a list of (name, children) pairs: repeated elements
            for child_name, grandchildren in value:
                _fill(ET.SubElement(parent, child_name), grandchildren)
            continue
        element = ET.SubElement(parent, name)
        if isinstance(value, tuple):  # nested children
            _fill(element, value)
        elif isinstance(value, bool):
            element.text = "true" if value else "false"
        else:
            element.text = str(value)


def document(root_name: str, children: Iterable[tuple[str, object]]) -> bytes:
    """An S3 answer document: children are (name, value) pairs; a value may be text, a number, a bool,
    a tuple of pairs (a nested element), a list of (name, pairs) (repeated elements), or None (left out)."""
    root = ET.Element(root_name, xmlns=NAMESPACE)
    _fill(root, children)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def acl_document(owner: tuple[tuple[str, str], ...]) -> bytes:
    """The `private` canned ACL: the owner, and one grant of FULL_CONTROL to the owner (a CanonicalUser)."""
    root = ET.Element("AccessControlPolicy", {"xmlns": NAMESPACE, "xmlns:xsi": _XSI})
    _fill(root, (("Owner", owner),))
    grant = ET.SubElement(ET.SubElement(root, "AccessControlList"), "Grant")
    _fill(ET.SubElement(grant, "Grantee", {"xsi:type": "CanonicalUser"}), owner)
    ET.SubElement(grant, "Permission").text = "FULL_CONTROL"
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def parse(body: bytes, what: str) -> ET.Element:
    """A request's XML body, its namespace dropped from every tag; MalformedXML if it is not XML."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise S3Error(400, "MalformedXML", f"the {what} body is not well-formed XML") from None
    for element in root.iter():
        element.tag = element.tag.rpartition("}")[2]
    return root


def iso_time(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{(time_ns // 1_000_000) % 1000:03d}Z"


def http_time(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns // 1_000_000_000, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


# imstore's error classes (by title) as S3 codes; the rest by HTTP status.
_BY_TITLE = {
    "key not found": (404, "NoSuchKey"),
    "key deleted": (404, "NoSuchKey"),
    "version not found": (404, "NoSuchVersion"),
    "invalid version": (400, "InvalidArgument"),
    "invalid key": (400, "InvalidArgument"),
    "precondition failed": (412, "PreconditionFailed"),
    "request body too large": (400, "EntityTooLarge"),
    "request body incomplete": (400, "IncompleteBody"),
    "request timeout": (400, "RequestTimeout"),
    "forbidden": (403, "AccessDenied"),
    "not authorised": (403, "AccessDenied"),
}
_BY_STATUS = {400: "InvalidRequest", 404: "NoSuchKey", 409: "OperationAborted", 412: "PreconditionFailed",
              500: "InternalError", 503: "ServiceUnavailable"}  # fmt: skip


def error_from_imstore(error: ImstoreError, message: str) -> S3Error:
    if error.title == "invalid key":  # S3's own words for a key it cannot take
        return S3Error(400, "InvalidURI", "Couldn't parse the specified URI.")
    status, code = _BY_TITLE.get(error.title, (error.http_status, _BY_STATUS.get(error.http_status, "InvalidRequest")))
    headers = {"Retry-After": "1"} if status == 503 else None
    return S3Error(status, code, message, headers)
