"""The floor for retrieve benchmarks: uvicorn streaming one file as a plain HTTP response.

    XDS_BENCH_FILE=/path/to/file uvicorn bench.plain_file_server:app --port N

No SOAP, no MTOM, no database: what serving the same bytes over loopback HTTP costs at best.
"""

from __future__ import annotations

import os

CHUNK = 256 * 1024


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    path = os.environ["XDS_BENCH_FILE"]
    size = os.path.getsize(path)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"), (b"content-length", str(size).encode())]})
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
