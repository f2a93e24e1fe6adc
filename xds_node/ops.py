"""Operations endpoints: ``/health`` (liveness), ``/ready`` (readiness) and ``/metrics``.

They need no credentials, so they answer only loopback callers (the access policy's notion of
loopback) and the networks in ``ops_allow`` (a monitoring host); anyone else gets the same 404 as
an unknown path, so their existence is not advertised either.
"""

from __future__ import annotations

import asyncio
import ipaddress
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xds_node.security.policy import is_loopback, peer_addresses

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: A readiness probe taking longer than this counts as not ready (a hung database).
READY_TIMEOUT = 5.0


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or single addresses) as networks; ValueError naming the bad one."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"ops_allow: {value!r} is not an IP network (CIDR such as 10.0.0.5/32)") from None
    return tuple(out)


@dataclass
class Operations:
    """Who may call the operations endpoints and what readiness means for this node."""

    allow: tuple[Network, ...] = ()
    #: Blocking checks, each returning "" when fine or what is wrong (run off the event loop).
    checks: tuple[Callable[[], str], ...] = ()

    def admits(self, address: str | None) -> bool:
        if is_loopback(address):
            return True
        return any(ip in net for ip in peer_addresses(address) for net in self.allow)

    async def ready(self) -> tuple[int, str]:
        """200 "ready", or 503 naming every check that failed."""
        def run_all() -> list[str]:
            return [p for p in (check() for check in self.checks) if p]

        try:
            problems = await asyncio.wait_for(asyncio.to_thread(run_all), READY_TIMEOUT)
        except TimeoutError:
            problems = [f"readiness checks did not finish within {READY_TIMEOUT:g} s"]
        if problems:
            return 503, "not ready: " + "; ".join(problems)
        return 200, "ready"


def database_check(engine: Any) -> Callable[[], str]:
    def check() -> str:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1").scalar()
        except Exception as exc:  # whatever the driver raises, the answer is "not ready"
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            return "database: " + (reason[0][:200] if reason else type(exc).__name__)
        return ""

    return check


def directory_check(name: str, folder: Path) -> Callable[[], str]:
    def check() -> str:
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".ready-"):
                pass
        except OSError as exc:
            return f"{name} {folder} is not writable: {exc.strerror or exc}"
        return ""

    return check


def for_node(node: Any) -> Operations:
    """The node's operations: ``ops_allow`` networks, database and content store checks."""
    settings = node.settings
    checks = [database_check(node.engine)]
    if node.audit_engine is not node.engine:
        checks.append(database_check(node.audit_engine))
    if not settings.documents_in_database:  # pushed documents go to the folder store: it must take them
        checks.append(directory_check("content store", Path(node.content_store.root)))
    return Operations(allow=parse_networks(settings.ops_allow), checks=tuple(checks))
