"""The HTTP server under ``xds-node serve``: uvicorn + httptools with connection-level limits.

httptools (llhttp) has no limit on header size or count, and uvicorn never times out a
connection that has not finished its request head, so a client could hold memory and file
descriptors for free. :class:`LimitedHttpToolsProtocol` adds, before the app sees a request:

- request line + headers over ``max_header_bytes`` or more than ``max_header_count`` fields: 431;
- a head not complete within ``header_timeout`` (including a new connection that sends nothing):
  408 if a request had started, else the connection is just closed;
- idle keep-alive connections closed after ``keep_alive_timeout`` (uvicorn's own timer);
- at most ``max_connections`` open: a new connection past it closes the longest-idle one, so
  idle sockets never starve real traffic; when none is idle the newcomer gets a 503;
- a connection whose response went out before its body was read is closed, not kept draining.

Body size, body time and XML limits live in the app (:mod:`xds_node.soap.body`).
"""

from __future__ import annotations

import errno
import logging
import resource
import socket
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any

import httptools
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from xds_node import metrics
from xds_node.soap.limits import ServerLimits, server_limits

log = logging.getLogger("xds_node.http")

#: After a refusal the rest of what the client sends is read and dropped for this long (or this
#: many bytes), so the client sees our answer instead of a reset (as nginx's lingering close).
LINGER_SECONDS = 2.0
LINGER_BYTES = 4 << 20
#: File descriptors kept free of connections (database, spool files, log files, outbound calls).
FD_RESERVE = 64


class _Reject(Exception):
    """Raised inside a parser callback to answer with ``status`` and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class NodeConfig(uvicorn.Config):
    """uvicorn's Config carrying our limits to every protocol instance (picklable for workers)."""

    def __init__(self, app: Any, *, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.xds_limits = limits


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header, time and connection limits (see module doc)."""

    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits: ServerLimits = getattr(config, "xds_limits", None) or ServerLimits()
        self._head_bytes = 0  # bytes received since the current request head began
        self._in_head = True
        self._head_timer: Any = None
        self._last_active = time.monotonic()
        self._rejection: _Reject | None = None
        self._linger_bytes = -1  # >= 0 while lingering after a refusal

    # --- connection lifecycle ---------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        if len(self.connections) >= _connection_cap(self._limits) and not self._evict_idle():
            super().connection_made(transport)
            self._reject(503, "too many connections")
            return
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _evict_idle(self) -> bool:
        """Close the connection idle the longest (no request in progress); False if none is idle."""
        victim: LimitedHttpToolsProtocol | None = None
        for conn in self.connections:
            if not isinstance(conn, LimitedHttpToolsProtocol) or not conn._idle():
                continue
            if victim is None or conn._last_active < victim._last_active:
                victim = conn
        if victim is None:
            return False
        victim.transport.close()
        victim.connections.discard(victim)  # connection_lost comes later; make room now
        return True

    def _idle(self) -> bool:
        """No request being processed or answered: waiting for (the rest of) a request head."""
        if self.transport.is_closing():
            return False
        if self._linger_bytes >= 0:  # refused already, only draining
            return True
        cycle = self.cycle
        return self._in_head and (cycle is None or cycle.response_complete)

    # --- timers -------------------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._limits.header_timeout, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._head_bytes:
            self._reject(408, "request head not received in time")
        else:
            self.transport.close()

    # --- parsing ------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._linger_bytes >= 0:
            self._linger_bytes += len(data)
            if self._linger_bytes > LINGER_BYTES:
                self.transport.close()
            return
        self._last_active = time.monotonic()
        if self._in_head:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            # httptools wraps an exception raised in a callback; ours carries the answer
            rej, self._rejection = self._rejection, None
            if rej is not None:
                self._reject(rej.status, rej.reason)
            else:
                log.debug("invalid HTTP request from %s", self.client[0] if self.client else "?")
                self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head and self._head_bytes and not self.transport.is_closing():
            if self._head_bytes > self._limits.max_header_bytes:
                # still no end of the head: do not let httptools buffer any more of it
                self._reject(431, "request header fields too large")
            else:
                self._arm_head_timer()  # a head split over packets must still end in time

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def _refuse(self, status: int, reason: str) -> _Reject:
        self._rejection = _Reject(status, reason)
        return self._rejection

    def on_headers_complete(self) -> None:
        # Checked once per request, not per header: the byte count above already bounds memory.
        if len(self.headers) > self._limits.max_header_count:
            raise self._refuse(431, "too many request header fields")
        if self._head_bytes > self._limits.max_header_bytes and (
            len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers) > self._limits.max_header_bytes
        ):
            raise self._refuse(431, "request header fields too large")
        self._in_head = False
        self._head_bytes = 0
        if self._head_timer is not None:
            self._cancel_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._last_active = time.monotonic()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            # answered before the body was read (404, 413, ...): do not keep receiving it
            self.transport.close()
            return
        self._in_head = True
        self._head_bytes = 0
        super().on_response_complete()

    # --- answers ------------------------------------------------------------------------------

    def _reject(self, status: int, reason: str) -> None:
        """Write a minimal response and close: the request was never handed to the app."""
        self._cancel_head_timer()
        if self.transport.is_closing():
            return
        log.debug("%s from %s: %s", status, self.client[0] if self.client else "?", reason)
        metrics.http_refusal(status)
        body = reason.encode("ascii")
        head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error"))
        headers = b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\nconnection: close\r\n" % len(
            body
        )
        if status == 503:
            headers += b"retry-after: 1\r\n"
        self.transport.write(head + headers + b"\r\n" + body)
        self._in_head = False
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._linger_bytes = 0
            self._head_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()
        if self.parser is not None:
            self.parser = httptools.HttpRequestParser(self)  # drop whatever the old one buffered


def raise_fd_limit() -> int:
    """Raise the soft file-descriptor limit to the hard limit; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _connection_cap(limits: ServerLimits) -> int:
    """The configured cap, lowered so connections can never exhaust the file-descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limits.max_connections
    return max(1, min(limits.max_connections, soft - FD_RESERVE))


def tls_context_factory(config: uvicorn.Config, default: Any) -> ssl.SSLContext:
    """uvicorn's server context with TLS 1.2 as an explicit floor (whatever OpenSSL defaults to)."""
    ctx = default()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class ListenError(OSError):
    """The listening address is taken or not ours: one line for the operator, never a traceback."""


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (inheritable, so workers share it); :class:`ListenError` if taken.

    Bound without SO_REUSEPORT, so any other process on the port, whatever its own options (even
    another xds-node that shares its port with its workers), makes this fail: never two nodes
    silently splitting one port's traffic."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(exc.errno, f"address already in use: {host}:{port} "
                                          "(another process listens there; choose --port)") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ListenError(exc.errno, f"cannot listen on {host}:{port}: not an address of this "
                                          "machine (choose --host)") from None
        raise
    sock.set_inheritable(True)
    return sock


#: Linux (3.9+) spreads connections over sockets sharing a port with SO_REUSEPORT; BSD and macOS
#: accept the option but hand every connection to one socket, so there the workers share one.
BALANCING_REUSEPORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_per_worker(host: str, port: int, workers: int) -> list[socket.socket]:
    """One listening socket per worker on the same address, sharing it with SO_REUSEPORT, so the
    kernel spreads new connections over the workers (by a hash of the connection's addresses).

    Why: with one socket shared by every worker, whichever worker's event loop wakes first accepts a
    whole burst of connections, and keep-alive holds them there: 32 benchmark connections split
    [32] or [26, 6] over two workers, so the second one idled. The first socket is bound exclusively
    (:func:`bind`: a port in use is still one clean :class:`ListenError`), then opened to its
    siblings; only sockets of this user with SO_REUSEPORT set can join."""
    first = bind(host, port)
    socks = [first]
    try:
        first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        address = first.getsockname()[:2]
        for _ in range(workers - 1):
            sock = socket.socket(first.family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.set_inheritable(True)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class PerWorkerSockets(Multiprocess):
    """uvicorn's worker supervisor, each worker serving its own listening socket (see
    :func:`bind_per_worker`). A worker that dies or is restarted (SIGHUP) is replaced on the same
    socket, so connections queued on it wait for the replacement instead of being reset."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets=sockets)
        self.worker_sockets = sockets

    def _start(self, slot: int) -> Process:
        process = Process(self.config, [self.worker_sockets[slot]])
        process.start()
        return process

    def init_processes(self) -> None:
        self.processes = [self._start(slot) for slot in range(self.processes_num)]

    def keep_subprocess_alive(self) -> None:
        for slot, process in enumerate(self.processes):
            if self.should_exit.is_set() or process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()
            process.join()
            if process.exitcode == STARTUP_FAILURE:  # the app or TLS is broken: restarting cannot help
                log.error("worker [%s] failed to start, stopping", process.pid)
                self.should_exit.set()
                return
            log.info("worker [%s] died; starting a new one on its socket", process.pid)
            self.processes[slot] = self._start(slot)

    def restart_all(self) -> None:
        for slot, old in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            new = self._start(slot)
            if not new.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                new.kill()
                new.join()
                log.error("new worker [%s] not ready in time; keeping [%s]", new.pid, old.pid)
                return
            old.terminate()
            old.join()
            self.processes[slot] = new

    def handle_ttin(self) -> None:
        log.info("SIGTTIN ignored: each worker has its own socket; restart with --workers N to change")

    def handle_ttou(self) -> None:
        log.info("SIGTTOU ignored: each worker has its own socket; restart with --workers N to change")


def run(app: Any, settings: Any, *, workers: int = 1, tls: dict | None = None,
        announce: Callable[[], None] | None = None, **extra: Any) -> None:
    """Serve ``app`` (an ASGI app, or an import string for a factory when ``workers > 1``).

    The socket is bound here first, then ``announce`` is called: a "serving on" line is never
    printed for an address another process holds."""
    soft = raise_fd_limit()
    limits = server_limits(settings)
    if limits.max_connections > soft - FD_RESERVE:
        log.warning("max_connections %d lowered to %d by the file-descriptor limit %d",
                    limits.max_connections, max(1, soft - FD_RESERVE), soft)
    options: dict[str, Any] = dict(
        host=settings.host, port=settings.port, log_config=None, access_log=settings.access_log,
        http=LimitedHttpToolsProtocol, loop="uvloop", timeout_keep_alive=limits.keep_alive_timeout,
        ws="none",  # no WebSocket endpoints: an Upgrade must not hand the socket to an unlimited protocol
        # the socket peer is the caller's address: uvicorn would otherwise take it from X-Forwarded-For
        # for any peer in FORWARDED_ALLOW_IPS ("*" in many images), so a remote caller could claim loopback
        proxy_headers=False,
        backlog=max(128, min(4096, limits.max_connections)),
    )
    options.update(tls or {})
    if options.get("ssl_certfile"):
        options.setdefault("ssl_ciphers", settings.tls_ciphers)
        options.setdefault("ssl_context_factory", tls_context_factory)
    options.update(extra)
    config = NodeConfig(app, limits=limits, workers=workers, **options)
    if workers > 1 and BALANCING_REUSEPORT:
        socks = bind_per_worker(settings.host, settings.port, workers)
    else:
        socks = [bind(settings.host, settings.port)]
    for sock in socks:
        sock.listen(config.backlog)
    if announce is not None:
        announce()
    if workers > 1 and len(socks) == workers:
        PerWorkerSockets(config, sockets=socks).run()
    elif workers > 1:
        Multiprocess(config, sockets=socks).run()
    else:
        uvicorn.Server(config).run(sockets=socks)
