"""A tiny HTTP/1.1 proxy for gateway tests: counts (and keeps) requests per SOAP action, can delay them or
answer chosen actions with an HTTP 500 SOAP fault. Lives only in the tests, so product code has no
test hooks. One request per connection (it answers ``Connection: close``), which keeps the
inspection exact even when the client pools connections."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections import Counter

_CLEN = re.compile(rb"(?im)^content-length:\s*(\d+)\r?$")
_CONN = re.compile(rb"(?im)^connection:[^\r\n]*\r\n")
_ACTION = re.compile(rb'action="([^"]+)"')

FAULT = (b'<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"><soap:Body><soap:Fault>'
         b"<soap:Code><soap:Value>soap:Receiver</soap:Value></soap:Code>"
         b'<soap:Reason><soap:Text xml:lang="en">registry database unavailable</soap:Text></soap:Reason>'
         b"</soap:Fault></soap:Body></soap:Envelope>")


def _close_header(head: bytes) -> bytes:
    head = _CONN.sub(b"", head)
    return head[:-2] + b"Connection: close\r\n\r\n"


class Proxy:
    def __init__(self, upstream_port: int, *, delay: float = 0.0, fault_actions: tuple[str, ...] = ()):
        self.upstream_port = upstream_port
        self.delay = delay
        self.fault_actions = fault_actions
        self.counts: Counter[str] = Counter()
        self.bodies: list[tuple[str, bytes]] = []  # (action, request body): what the partner received
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()
        self._server.close()
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            m = _CLEN.search(head)
            body = await reader.readexactly(int(m.group(1))) if m else b""
            action_m = _ACTION.search(head)
            action = action_m.group(1).decode() if action_m else ""
            self.counts[action] += 1
            self.bodies.append((action, body))
            if self.delay:
                await asyncio.sleep(self.delay)
            if any(a == action for a in self.fault_actions):
                writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/soap+xml\r\n"
                             b"Content-Length: " + str(len(FAULT)).encode() + b"\r\nConnection: close\r\n\r\n" + FAULT)
                await writer.drain()
                return
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            uw.write(_close_header(head) + body)
            await uw.drain()
            resp_head = await ur.readuntil(b"\r\n\r\n")
            writer.write(_close_header(resp_head))
            while chunk := await ur.read(256 * 1024):
                writer.write(chunk)
                await writer.drain()
            uw.close()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
