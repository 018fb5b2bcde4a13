"""An S3 server that reads every body and discards it: the floor of `aws s3 cp` (the client's own cost).

It speaks just enough of S3 for `aws s3 cp` (CreateMultipartUpload, UploadPart, Complete, PutObject) on the
same transport as the gateway's front (aiohttp's low-level server on uvloop, http or https), checks no
signature, hashes nothing and stores nothing. bench_s3.py times aws-cli against it.

Usage: python bench/s3_null.py PORT [CERT KEY]
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import sys

from aiohttp import web

ETAG = '"' + "0" * 32 + '"'  # aws-cli does not check a part's ETag


async def handle(request: web.BaseRequest) -> web.StreamResponse:
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    while await request.content.readany():  # read and discard
        pass
    query, bucket, _, key = request.query, *request.path.lstrip("/").partition("/")
    if request.method == "POST" and "uploads" in query:
        body = f"<InitiateMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{key}</Key><UploadId>{secrets.token_hex(16)}</UploadId></InitiateMultipartUploadResult>"  # noqa: E501
    elif request.method == "POST":
        body = f"<CompleteMultipartUploadResult><Bucket>{bucket}</Bucket><Key>{key}</Key><ETag>{ETAG}</ETag>"
        body += "</CompleteMultipartUploadResult>"
    else:
        return web.Response(headers={"ETag": ETAG})
    return web.Response(body=body.encode(), content_type="application/xml")


async def serve(port: int, tls: ssl.SSLContext | None) -> None:
    server = web.Server(handle)
    loop = asyncio.get_running_loop()
    await loop.create_server(server, "127.0.0.1", port, ssl=tls)
    await asyncio.Event().wait()  # until killed


def main(argv: list[str]) -> None:
    tls = None
    if len(argv) > 1:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(argv[1], argv[2])
    try:
        import uvloop

        uvloop.run(serve(int(argv[0]), tls))
    except ImportError:
        asyncio.run(serve(int(argv[0]), tls))


if __name__ == "__main__":
    main(sys.argv[1:])
