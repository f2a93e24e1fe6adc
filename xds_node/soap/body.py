"""Reading an HTTP request body under limits: size, time, and memory shared by all requests.

A body that is announced but never finished must not hold memory or a task forever, so every
``receive()`` waits at most the idle timeout (and the whole body at most the total timeout);
both end in a 408. Past ``spool_bytes`` (or when the bodies in RAM across the process already
reach ``max_inflight_memory``) the body goes to an anonymous temp file, so withheld uploads cost
disk, not RAM; the total in flight (RAM and disk) is capped as well, answered with a 503.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import IO, Any

from .fault import SoapFault
from .limits import BodyLimits


class Inflight:
    """Bytes held by bodies being received in this process (one per app; the loop is single-threaded)."""

    def __init__(self) -> None:
        self.memory = 0
        self.total = 0


def _too_slow() -> SoapFault:
    return SoapFault("Sender", "Request body not received in time", http_status=408)


def _too_large(cap: int) -> SoapFault:
    return SoapFault("Sender", f"Message larger than {cap} bytes", http_status=413)


def _busy() -> SoapFault:
    return SoapFault("Receiver", "Server busy: too many request bodies in flight, retry later", http_status=503)


class BodyReader:
    """Accumulates one body; ``release()`` must run when the request is done (it is idempotent)."""

    def __init__(self, limits: BodyLimits, inflight: Inflight) -> None:
        self.limits = limits
        self.inflight = inflight
        self._chunks: list[bytes] = []
        self._memory = 0
        self._total = 0
        self._spool: IO[bytes] | None = None

    def _add(self, chunk: bytes) -> None:
        n = len(chunk)
        lim, infl = self.limits, self.inflight
        if self._total + n > lim.max_bytes:
            raise _too_large(lim.max_bytes)
        if infl.total + n > lim.max_inflight:
            raise _busy()
        self._total += n
        infl.total += n
        if self._spool is None and (
            self._memory + n > lim.spool_bytes or infl.memory + n > lim.max_inflight_memory
        ):
            self._start_spool()
        if self._spool is not None:
            self._spool.write(chunk)
        else:
            self._chunks.append(chunk)
            self._memory += n
            infl.memory += n

    def _start_spool(self) -> None:
        spool_dir = self.limits.spool_dir
        if spool_dir:
            os.makedirs(spool_dir, exist_ok=True)
        try:
            self._spool = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 (closed by release())
        except OSError as exc:
            raise SoapFault("Receiver", "Cannot buffer the request body", http_status=503) from exc
        try:
            for chunk in self._chunks:
                self._spool.write(chunk)
        except OSError as exc:
            raise SoapFault("Receiver", "Cannot buffer the request body", http_status=503) from exc
        self.inflight.memory -= self._memory
        self._memory = 0
        self._chunks = []

    async def read(self, receive: Any, announced: int | None) -> bytes | None:
        """The whole body (None when the client went away), or a SoapFault (408/413/503)."""
        lim = self.limits
        if announced is not None and announced > lim.max_bytes:
            raise _too_large(lim.max_bytes)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + lim.timeout
        try:
            # one timer for the whole body, pushed forward as pieces arrive (cheaper than wait_for)
            async with asyncio.timeout(min(lim.idle_timeout, lim.timeout)) as timer:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    if chunk:
                        try:
                            self._add(chunk)
                        except OSError as exc:  # disk full while spooling
                            raise SoapFault("Receiver", "Cannot buffer the request body", http_status=503) from exc
                    if not message.get("more_body", False):
                        break
                    timer.reschedule(min(loop.time() + lim.idle_timeout, deadline))
        except TimeoutError:
            raise _too_slow() from None
        if self._spool is None:
            chunks = self._chunks
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        spool = self._spool

        def read_back() -> bytes:
            spool.seek(0)
            return spool.read()

        return await asyncio.to_thread(read_back)

    @property
    def spooled(self) -> bool:
        return self._spool is not None

    def release(self) -> None:
        """Give back this body's share of the in-flight budget and drop the spool file."""
        self.inflight.memory -= self._memory
        self.inflight.total -= self._total
        self._memory = self._total = 0
        self._chunks = []
        if self._spool is not None:
            self._spool.close()
            self._spool = None
