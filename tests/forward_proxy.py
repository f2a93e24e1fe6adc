"""A small forward proxy for tests and the fan-out benchmark (test code, never shipped):

* ``CONNECT host:port`` opens a tunnel (what a client does for an https partner; the proxy sees
  only TLS bytes);
* an absolute-form request (``POST http://host:port/path``) is forwarded in origin form, each
  request on a kept-alive connection recorded and forwarded in turn (answers relayed as they come);
* ``--auth user:password`` demands ``Proxy-Authorization: Basic`` (else 407);
* ``--blackhole`` accepts connections and never answers (a proxy that hangs).

Run as its own process: ``python -m tests.forward_proxy --log FILE``; it prints its port on the
first line of stdout and appends one JSON line per request to FILE (method, target, SOAP action,
whether credentials came and were right, bytes relayed), flushed at once, so a test can read what
went through it while it runs. Stops when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

_CLEN = re.compile(rb"(?im)^content-length:\s*(\d+)\r?$")
_ACTION = re.compile(rb'(?i)action="([^"]+)"')
_HOP = re.compile(rb"(?im)^(proxy-authorization|proxy-connection):[^\n]*\n")


class ForwardProxy:
    def __init__(self, log: IO[str] | None, *, auth: str | None = None, blackhole: bool = False) -> None:
        self.log = log
        self.expected = ("Basic " + base64.b64encode(auth.encode()).decode()) if auth else None
        self.blackhole = blackhole
        self.records: list[dict] = []

    def record(self, **entry: object) -> None:
        self.records.append(entry)
        if self.log is not None:
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()

    def _authorized(self, head: bytes) -> tuple[bool, bool]:
        """(credentials sent, credentials right)."""
        m = re.search(rb"(?im)^proxy-authorization:\s*([^\r\n]*)", head)
        sent = m is not None
        if self.expected is None:
            return sent, True
        return sent, sent and m.group(1).decode("latin-1").strip() == self.expected

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.blackhole:
                await reader.read()  # never answer
                return
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            sent, ok = self._authorized(head)
            if not ok:
                self.record(method=method, target=target, credentials=sent, authorized=False)
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                             b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n'
                             b"Connection: close\r\n\r\n")
                await writer.drain()
                return
            if method == "CONNECT":
                await self._tunnel(target, reader, writer, credentials=sent)
            else:
                await self._forward(head, method, target, reader, writer, credentials=sent)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _tunnel(self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                      credentials: bool) -> None:
        host, _, port = target.rpartition(":")
        try:
            up_r, up_w = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            self.record(method="CONNECT", target=target, credentials=credentials, authorized=True, status=502)
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        entry = {"method": "CONNECT", "target": target, "credentials": credentials, "authorized": True,
                 "status": 200}
        self.record(**entry)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_w), _pipe(up_r, writer))

    async def _forward(self, head: bytes, method: str, target: str, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, *, credentials: bool) -> None:
        u = urlsplit(target)
        if u.scheme != "http" or not u.hostname:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        origin = (u.hostname, u.port or 80)
        try:
            up_r, up_w = await asyncio.open_connection(*origin)
        except OSError:
            self.record(method=method, target=target, credentials=credentials, authorized=True, status=502)
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            return
        answers = asyncio.ensure_future(_pipe(up_r, writer))
        try:
            while True:
                line, rest = head.split(b"\r\n", 1)
                method, target, version = line.decode("latin-1").split(" ", 2)
                u = urlsplit(target)
                if u.scheme and (u.hostname, u.port or 80) != origin:
                    break  # another origin on this connection: the client opens a new one
                path = (u.path or "/") + (f"?{u.query}" if u.query else "")
                m = _CLEN.search(head)
                body = await reader.readexactly(int(m.group(1))) if m else b""
                action = _ACTION.search(head)
                self.record(method=method, target=target, credentials=credentials, authorized=True,
                            action=action.group(1).decode() if action else None, bytes=len(body))
                up_w.write(f"{method} {path} {version}\r\n".encode("latin-1") + _HOP.sub(b"", rest) + body)
                await up_w.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                credentials, _ = self._authorized(head)
        finally:
            up_w.close()
            await asyncio.wait([answers], timeout=5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _main(args: argparse.Namespace) -> None:
    log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115
    proxy = ForwardProxy(log, auth=args.auth, blackhole=args.blackhole)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.port, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    server.close()


class ProxyProcess:
    """The proxy as a separate process (what a test or the benchmark starts): ``url``, ``records()``."""

    def __init__(self, log_dir: Path, *args: str, credentials: str | None = None) -> None:
        self.log = Path(log_dir) / f"proxy-{uuid.uuid4().hex[:8]}.jsonl"
        self.log.touch()
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.forward_proxy", "--log", str(self.log), *args],
                                     cwd=Path(__file__).resolve().parents[1], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}"

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines() if line]

    def clear(self) -> None:
        self.log.write_text("", encoding="utf-8")

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log")
    ap.add_argument("--auth", help="user:password the proxy demands")
    ap.add_argument("--blackhole", action="store_true")
    asyncio.run(_main(ap.parse_args()))


if __name__ == "__main__":
    main()
