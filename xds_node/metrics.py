"""Prometheus metrics (``GET /metrics``), with the maintained ``prometheus-client``.

Every name starts with ``xds_``. Labels take values from small fixed sets (transactions,
outcomes, HTTP statuses, configured partners), never from request content, so a caller cannot
grow the series. The children of labelled metrics are resolved once and cached, so counting a
request costs a dict lookup, a counter increment and a histogram observation (README, "Health,
readiness and metrics" has the measured figure).

With ``serve --workers N`` each worker is a process: ``serve`` sets ``PROMETHEUS_MULTIPROC_DIR``
(cleaned at start, :func:`prepare_multiprocess`) before the workers import this module, each
worker writes its values to memory-mapped files there, and :func:`render` sums every worker's
files, so any worker answers ``/metrics`` for all of them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Sub-directory of the data directory holding the workers' metric files.
MULTIPROC_SUBDIR = "metrics"

REGISTRY = CollectorRegistry(auto_describe=True)
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REQUESTS = Counter("xds_requests", "SOAP requests handled, by transaction and outcome",
                   ["transaction", "outcome"], registry=REGISTRY)
REQUEST_SECONDS = Histogram("xds_request_duration_seconds",
                            "Time from the security step to the handler's answer, by transaction",
                            ["transaction"], buckets=_BUCKETS, registry=REGISTRY)
PARTNER_CALLS = Counter("xds_partner_calls", "Initiating-gateway calls to partner communities",
                        ["partner", "transaction", "outcome"], registry=REGISTRY)
PARTNER_SECONDS = Histogram("xds_partner_call_duration_seconds",
                            "Initiating-gateway call time per partner and transaction (retries included)",
                            ["partner", "transaction"], buckets=_BUCKETS, registry=REGISTRY)
AUDIT_FAILURES = Counter("xds_audit_write_failures", "Audit records that could not be written",
                         ["target"], registry=REGISTRY)
HTTP_REFUSALS = Counter("xds_http_refusals", "Requests refused by an HTTP limit before any SOAP processing",
                        ["status"], registry=REGISTRY)

#: Transaction label of each request action.
TRANSACTIONS = {
    "urn:ihe:iti:2007:RegistryStoredQuery": "ITI-18",
    "urn:ihe:iti:2007:CrossGatewayQuery": "ITI-38",
    "urn:ihe:iti:2007:CrossGatewayRetrieve": "ITI-39",
    "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b": "ITI-41",
    "urn:ihe:iti:2007:RegisterDocumentSet-b": "ITI-42",
    "urn:ihe:iti:2007:RetrieveDocumentSet": "ITI-43",
    "urn:ihe:iti:2009:MultiPatientStoredQuery": "ITI-51",
    "urn:hl7-org:v3:PRPA_IN201305UV02:CrossGatewayPatientDiscovery": "ITI-55",
}
#: Endpoints whose transactions are counted apart from the same action elsewhere (path prefix -> label prefix).
PATH_PREFIXES = (("/ig/", "ig-"), ("/xdr", "xdr-"))
OUTCOMES = ("success", "partial", "failure", "denied", "fault")


def transaction_label(path: str, action: str) -> str:
    name = TRANSACTIONS.get(action) or "other"
    for prefix, label in PATH_PREFIXES:
        if path.startswith(prefix):
            return label + name
    return name


# --- requests ----------------------------------------------------------------------------------
class _Recorder:
    """Pre-resolved children for one transaction: one increment and one observation per request."""

    __slots__ = ("counts", "seconds")

    def __init__(self, transaction: str) -> None:
        self.counts = {o: REQUESTS.labels(transaction, o) for o in OUTCOMES}
        self.seconds = REQUEST_SECONDS.labels(transaction)

    def __call__(self, outcome: str, started: float) -> None:
        self.counts[outcome].inc()
        self.seconds.observe(time.perf_counter() - started)


_STATUS_FAILURE = b"ResponseStatusType:Failure"
_STATUS_PARTIAL = b"ResponseStatusType:PartialSuccess"
_RS_RESPONSE = "{urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0}RegistryResponse"
_HL7_ACK = "{urn:hl7-org:v3}acknowledgement/{urn:hl7-org:v3}typeCode"


def response_outcome(body: Any) -> str:
    """success / partial / failure from an answer's RegistryResponse status or HL7v3 acknowledgement."""
    if isinstance(body, bytes | bytearray | memoryview):
        # the status is on the root or (retrieve answers) its first child: read only those start tags
        first = body.find(b">", 0, 4096)
        second = body.find(b">", first + 1, first + 4096) if first >= 0 else -1
        head = bytes(body[:second + 1 if second >= 0 else 4096])
        if _STATUS_FAILURE in head:
            return "failure"
        return "partial" if _STATUS_PARTIAL in head else "success"
    status = body.get("status")
    if status is None:
        rr = body.find(_RS_RESPONSE)
        status = rr.get("status") if rr is not None else None
    if status is not None:
        if status.endswith(":Failure"):
            return "failure"
        return "partial" if status.endswith(":PartialSuccess") else "success"
    ack = body.find(_HL7_ACK)
    if ack is not None and ack.get("code") not in ("AA", "CA"):
        return "failure"
    return "success"


def _instrumented(transaction: str, hooks: list, handler: Callable[[Any], Awaitable[Any]]) -> Any:
    """The endpoint's hooks and handler as one handler, counted: a SoapFault from a hook (the
    security step) is ``denied``, one from the handler or any other error ``fault``."""
    from xds_node.soap.fault import SoapFault

    record = _Recorder(transaction)

    async def run(req: Any) -> Any:
        started = time.perf_counter()
        outcome = "fault"
        try:
            for hook in hooks:
                try:
                    await hook(req)
                except SoapFault:
                    outcome = "denied"
                    raise
            resp = await handler(req)
            outcome = response_outcome(resp.body)
            return resp
        finally:
            record(outcome, started)

    return run


def instrument(endpoints: Iterable[Any]) -> list[Any]:
    """Endpoints whose handlers count and time every request (same order: hooks, then handler)."""
    out = []
    for ep in endpoints:
        handlers = {action: _instrumented(transaction_label(ep.path, action), list(ep.before), handler)
                    for action, handler in ep.handlers.items()}
        out.append(dataclasses.replace(ep, handlers=handlers, before=[]))
    return out


# --- other events ------------------------------------------------------------------------------
def partner_call(partner: str, action: str, outcome: str, seconds: float) -> None:
    transaction = TRANSACTIONS.get(action, "other")
    PARTNER_CALLS.labels(partner, transaction, outcome).inc()
    PARTNER_SECONDS.labels(partner, transaction).observe(seconds)


def audit_failure(target: str) -> None:
    """``database`` (the record was not stored: the request is refused) or ``sink`` (syslog)."""
    AUDIT_FAILURES.labels(target).inc()


_REFUSALS: dict[int, Any] = {}


def http_refusal(status: int) -> None:
    child = _REFUSALS.get(status)
    if child is None:
        child = _REFUSALS[status] = HTTP_REFUSALS.labels(str(status))
    child.inc()


# --- exposition --------------------------------------------------------------------------------
def prepare_multiprocess(data_dir: Path) -> Path:
    """Set up (and empty) the workers' metrics directory; call in ``serve`` before workers start."""
    folder = Path(data_dir) / MULTIPROC_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.db"):  # values of an earlier run's workers
        old.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder.resolve())
    return folder


def render() -> tuple[bytes, str]:
    """The exposition text and its content type: all workers' values in multiprocess mode."""
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
