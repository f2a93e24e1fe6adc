"""Per-request resource limits, gathered from settings in one place.

Two layers enforce them: the HTTP protocol (:mod:`xds_node.httpserver`: header size and count,
header and keep-alive time, connection count) and the ASGI app (:class:`~xds_node.soap.app.SoapApp`:
body size, body time, body memory, XML shape). Each limit answers with its own status so a client
can tell what it hit: 431 headers, 413 body, 408 slow body, 503 busy, a Sender fault for XML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class XmlLimits:
    """Shape limits checked while parsing, before a large tree exists."""

    max_elements: int = 200_000
    max_depth: int = 100
    max_bytes: int = 64 << 20


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """How much and how slowly a request body may arrive, and how much of it stays in RAM."""

    max_bytes: int = 64 << 20
    idle_timeout: float = 15.0  # longest pause between two pieces of the body
    timeout: float = 300.0  # the whole body
    spool_bytes: int = 1 << 20  # past this a body goes to a temp file
    max_inflight_memory: int = 64 << 20  # bodies in RAM across requests; past it every new body spools
    max_inflight: int = 2 << 30  # bodies in RAM or spooled across requests; past it: 503
    spool_dir: str | None = None


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Connection-level limits applied by the HTTP protocol, before the app sees a request."""

    max_header_bytes: int = 256 << 10
    max_header_count: int = 100
    header_timeout: float = 10.0
    keep_alive_timeout: float = 30.0
    max_connections: int = 1000


def body_limits(settings: Any) -> BodyLimits:
    return BodyLimits(
        max_bytes=settings.max_body_bytes,
        idle_timeout=float(settings.body_idle_timeout_seconds),
        timeout=float(settings.body_timeout_seconds),
        spool_bytes=settings.body_spool_bytes,
        max_inflight_memory=settings.max_inflight_memory_bytes,
        max_inflight=settings.max_inflight_body_bytes,
        spool_dir=str(settings.data_dir / "tmp"),
    )


def xml_limits(settings: Any) -> XmlLimits:
    return XmlLimits(settings.max_xml_elements, settings.max_xml_depth, settings.max_xml_bytes)


def server_limits(settings: Any) -> ServerLimits:
    return ServerLimits(
        max_header_bytes=settings.max_header_bytes,
        max_header_count=settings.max_header_count,
        header_timeout=float(settings.header_timeout_seconds),
        keep_alive_timeout=float(settings.keep_alive_timeout_seconds),
        max_connections=settings.max_connections,
    )


def app_options(settings: Any) -> dict[str, Any]:
    """Keyword arguments for :class:`SoapApp` from node settings (limits and the WSDL address)."""
    return {
        "max_body_bytes": settings.max_body_bytes,
        "body": body_limits(settings),
        "xml": xml_limits(settings),
        "base_url": settings.base_url,
        "server_names": tuple(settings.server_names),
        "fallback_url": settings.public_url,
    }
