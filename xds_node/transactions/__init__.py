"""One small module per IHE transaction: parse the payload, call the actor, write the answer.

Each module exposes ``ACTION`` and ``make_handler(...)`` returning the async SOAP handler; the
pure ``respond``-style functions below the handler are what tests and other transactions reuse
(ITI-38 is ITI-18 with the XCA profile rules).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from lxml import etree

from xds_node.audit.store import commit_all, deferring
from xds_node.soap.fault import SoapFault

P = ParamSpec("P")
T = TypeVar("T")


#: Run database work on the event loop itself. Right for embedded SQLite, where a query takes a
#: fraction of a millisecond and a thread hand-off (GIL switching) costs more than it saves;
#: the node turns it off for network databases so one slow query never stalls the others.
INLINE_DB = False


async def blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run database-bound actor code, in a worker thread unless INLINE_DB says it is cheap."""
    if INLINE_DB:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


#: Seconds a caller is asked to wait (``Retry-After``) when the audit trail cannot be written.
AUDIT_RETRY_AFTER = 30

log = logging.getLogger("xds_node.audit")


def audit_unavailable() -> SoapFault:
    """The answer when a disclosure cannot be audited: a SOAP 1.2 Receiver fault ("our fault, try
    again") with HTTP 503 and Retry-After instead of the SOAP binding's default 500, because the
    condition is temporary (a full disk, a database fail-over) and says nothing about the request."""
    return SoapFault("Receiver", "Temporarily unable to answer: please retry later", http_status=503,
                     http_headers=[("Retry-After", str(AUDIT_RETRY_AFTER))])


async def audited(record: Callable[..., Any], *args: Any, what: str) -> None:
    """Run one audit ``record(*args)``; if the row is not committed, log an ERROR and raise the
    :func:`audit_unavailable` fault so the answer (and the patient data in it) never leaves.

    The rows the recorder writes through :meth:`AuditLog.record` are collected (see
    :func:`deferring`) and committed by the worker's group commit, which this request awaits: many
    requests share one transaction, and each still waits for its own row. A coroutine recorder is
    awaited; a synchronous one runs on the loop, since with deferral it only builds the events.
    The optional syslog copy is the store's business and never raises here.
    """
    try:
        with deferring() as pending:
            res = record(*args)
            if res is not None and inspect.isawaitable(res):
                await res
        await commit_all(pending)
    except SoapFault:
        raise
    except Exception:
        log.error("audit of %s could not be written: the answer is withheld", what, exc_info=True)
        raise audit_unavailable() from None


async def notify(audit, req, transaction: str, result) -> None:
    """Audit a transaction's outcome before its answer is sent; fails closed (see :func:`audited`)."""
    if audit is None:
        return
    await audited(audit, req, transaction, result, what=transaction)


@dataclass
class Audited:
    """What an internal (XDS / initiating-gateway) transaction did, for its audit row: the same
    shape the gateway transactions hand to ``notify`` (status, patients, documents, error codes)."""

    status: str
    query_id: str | None = None
    patient_ids: list[str] = field(default_factory=list)
    document_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: For answers that span patients (ITI-51, id-keyed queries): each patient's documents, so
    #: the audit writes one row per patient and every patient's accounting shows the disclosure.
    documents_by_patient: dict[str, list[str]] | None = None


def submission_audit(status: str, submission, errors) -> Audited:
    """ITI-41 / ITI-42: the submission's patient and its documents' uniqueIds."""
    patients: list[str] = []
    if submission is not None:
        ss = submission.submission_set
        found = [ss.patient_id] if ss is not None and ss.patient_id else []
        found += [d.patient_id for d in submission.documents if d.patient_id]
        patients = list(dict.fromkeys(found))
    docs = [d.unique_id for d in submission.documents if d.unique_id] if submission is not None else []
    return Audited(status, patient_ids=patients, document_ids=docs, errors=[e.code for e in errors])


def expect_body(body: etree._Element, ns: str, local: str) -> None:
    """A payload of the wrong type is the sender's mistake: answer with a Sender fault naming it."""
    if body.tag != f"{{{ns}}}{local}":
        raise SoapFault("Sender", f"Expected {local} in the SOAP Body, got {etree.QName(body).localname}")
